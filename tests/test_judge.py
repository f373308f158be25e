"""LLaVA-Bench LLM judge against a local fake chat-completions endpoint: request format, score
parsing, relative scores, on-disk cache (a re-run sends nothing), retries, and "not scored"."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from perceptlm.data import LLaVABenchDataModule
from perceptlm.evaluation.judge import RULES, SYSTEM, Judge, JudgeConfig, parse_scores, score_llava_bench
from perceptlm.evaluation.scoring import score

REPLIES = {"q1": "8 6\nAssistant 2 misses a detail.", "q2": "10,5\nToo short.", "q3": "Both are fine.",
           "q4": "7 7\nSame.", "q5": "4 2\nWrong colour."}
CATEGORIES = {"q1": "conv", "q2": "conv", "q3": "detail", "q4": "complex", "q5": "detail"}


@pytest.fixture()
def endpoint():
    """A chat-completions server on 127.0.0.1 that records requests; ``fail_first`` 500s."""
    state = {"requests": [], "fail_first": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if state["fail_first"] > 0:
                state["fail_first"] -= 1
                self.send_response(500)
                self.end_headers()
                return
            question = body["messages"][1]["content"].split("[Question]\n", 1)[1].split("\n", 1)[0]
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": REPLIES[question]}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _no_judge_environment(monkeypatch):
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "PERCEPTLM_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)


def _items():
    return [{"category": CATEGORIES[q], "question": q, "context": f"A photo for {q}.", "reference": f"reference {q}",
             "prediction": f"model {q}"} for q in REPLIES]


def test_parse_scores_follows_llava():
    assert parse_scores("8 6\nbecause") == (8.0, 6.0)
    assert parse_scores("9.5,7\n") == (9.5, 7.0)
    assert parse_scores("10, 5") is None  # LLaVA: the comma becomes a space, then "10", "", "5"
    assert parse_scores("8  6") is None and parse_scores("Scores: 8 6") is None and parse_scores("8") is None


def test_fake_endpoint_scores_and_cache(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    config = JudgeConfig(base_url=endpoint["url"], model="judge-x", cache_dir=str(tmp_path / "cache"), backoff=0)
    judge = Judge(config)
    results = score_llava_bench(_items(), judge)
    assert judge.requests == 5 and len(endpoint["requests"]) == 5
    request = endpoint["requests"][0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer test-key"
    body = request["body"]
    assert body["model"] == "judge-x" and body["temperature"] == 0.2 and body["max_tokens"] == 1024
    assert body["messages"][0] == {"role": "system", "content": SYSTEM}
    assert body["messages"][1]["content"] == (
        "[Context]\nA photo for q1.\n\n[Question]\nq1\n\n[Assistant 1]\nreference q1\n\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\nmodel q1\n\n[End of Assistant 2]\n\n[System]\n{RULES['in-the-wild']}\n\n")
    assert results["conv"]["relative"] == pytest.approx(100 * (6 + 5) / (8 + 10))
    assert results["detail"]["relative"] == pytest.approx(50.0) and results["detail"]["unparsed"] == 1
    assert results["complex"]["relative"] == pytest.approx(100.0) and results["complex"]["model"] == 7
    assert results["all"]["relative"] == pytest.approx(100 * 20 / 29) and results["all"]["count"] == 4

    again = Judge(config)
    assert score_llava_bench(_items(), again) == results
    assert again.requests == 0 and len(endpoint["requests"]) == 5  # every reply came from the cache


def test_retries_then_succeeds(endpoint, tmp_path):
    endpoint["fail_first"] = 2
    judge = Judge(JudgeConfig(base_url=endpoint["url"], model="judge-x", cache_dir=str(tmp_path), retries=2, backoff=0))
    assert judge.complete("[Question]\nq4\n") == REPLIES["q4"] and judge.requests == 3


def test_without_an_endpoint_nothing_is_scored(tmp_path):
    judge = Judge(JudgeConfig(cache_dir=str(tmp_path)))
    assert judge.unavailable and score_llava_bench(_items(), judge) == {"complex": None, "conv": None, "detail": None,
                                                                        "all": None}
    meta = [{"task": "llava_bench", "category": "conv", "question": "q1", "context": "c"}]
    assert score("llava_bench", ["an answer"], [["a reference"]], meta) == {}  # not scored: absent, never 0

    down = Judge(JudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", cache_dir=str(tmp_path), retries=1,
                             backoff=0, timeout=2))
    assert score_llava_bench(_items(), down) == {"complex": None, "conv": None, "detail": None, "all": None}
    assert down.requests == 2  # an unreachable endpoint is tried once (with its retries), not per question


def test_llava_bench_layouts_and_end_to_end(endpoint, tmp_path):
    wild = tmp_path / "wild"
    (wild / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(wild / "images" / "001.jpg")
    questions = [{"question_id": k, "image": "001.jpg", "text": q, "category": CATEGORIES[q]} for k, q in enumerate(REPLIES)]
    (wild / "questions.jsonl").write_text("\n".join(json.dumps(q) for q in questions))
    (wild / "answers_gpt4.jsonl").write_text("\n".join(json.dumps({"question_id": k, "text": f"reference {q}"})
                                                       for k, q in enumerate(REPLIES)))
    (wild / "context.jsonl").write_text(json.dumps({"id": "001", "image": "001.jpg", "caption": "A red bus."}))
    judge = {"base_url": endpoint["url"], "model": "judge-x", "cache_dir": str(tmp_path / "cache"), "backoff": 0}
    samples = LLaVABenchDataModule(data_root=str(wild), judge=judge).load_samples("test")
    assert [s.targets for s in samples][:1] == [["reference q1"]] and samples[0].extra["meta"]["context"] == "A red bus."
    meta = [s.extra["meta"] for s in samples]
    metrics = score("llava_bench", [f"model {q}" for q in REPLIES], [s.targets for s in samples], meta)
    assert metrics["relative_conv"] == pytest.approx(100 * 11 / 18) and metrics["relative_all"] == pytest.approx(100 * 20 / 29)
    assert all(r["auth"] is None for r in endpoint["requests"])  # no key configured: no Authorization header

    coco = tmp_path / "coco"
    (coco / "val2014").mkdir(parents=True)
    (coco / "questions.jsonl").write_text(json.dumps({"question_id": 0, "image": "COCO_val2014_1.jpg", "text": "q1",
                                                      "category": "conv"}))
    (coco / "answers_gpt4.jsonl").write_text(json.dumps({"question_id": 0, "text": "ref"}))
    (coco / "context.jsonl").write_text(json.dumps({"image": "COCO_val2014_1.jpg", "captions": ["A bus.", "A red bus."],
                                                    "instances": [{"category": "bus", "bbox": [0.1, 0.2, 0.5, 0.9]}]}))
    (sample,) = LLaVABenchDataModule(data_root=str(coco), layout="coco").load_samples("test")
    assert sample.extra["meta"]["context"] == "A bus.\nA red bus.\n\nbus: [0.1, 0.2, 0.5, 0.9]"
    assert sample.media == coco / "val2014" / "COCO_val2014_1.jpg"
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        LLaVABenchDataModule(data_root=str(coco), judge={"api_key": "secret"})
    with pytest.raises(ValueError, match="evaluation benchmark"):
        LLaVABenchDataModule(data_root=str(coco)).load_samples("train")


def test_a_bad_judge_setting_fails_when_the_datamodule_is_built(tmp_path):
    from dataclasses import fields

    from perceptlm.data.llava_bench import JUDGE_SETTINGS

    # the datamodule's list of settings is the judge's configuration but its key
    assert set(JUDGE_SETTINGS) == {f.name for f in fields(JudgeConfig)} - {"api_key"}
    with pytest.raises(ValueError, match=r"unknown judge settings \['modle'\]; valid: \['backoff', 'base_url'"):
        LLaVABenchDataModule(data_root=str(tmp_path), judge={"modle": "judge-x"})
