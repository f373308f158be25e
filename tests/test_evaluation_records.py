"""Evaluation records: gathered across ranks with each sample once (DDP, gloo), scored once with the
blind baseline and option likelihood, and written as results.json + predictions.jsonl."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket

import pytest
import torch

from perceptlm.evaluation import keys as K
from perceptlm.evaluation.records import gather_records, results_summary, write_results
from perceptlm.evaluation.scoring import score, score_records

# DistributedSampler with 5 samples on 2 ranks pads rank 1 with a repeat of sample 0.
SHARDS = {0: [0, 2, 4], 1: [1, 3, 0]}


def _record(i: int) -> dict:
    return {"id": str(i), "prediction": f"answer {i}", "references": [f"answer {i}"]}


def test_gather_records_keeps_each_id_once_in_natural_order():
    records = [_record(i) for i in (10, 2, 2, 1)] + [{"id": "b", "prediction": "", "references": [""]}]
    assert [r["id"] for r in gather_records(records)] == ["1", "2", "10", "b"]


def _worker(rank, port, queue):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        queue.put((rank, gather_records([_record(i) for i in SHARDS[rank]])))
    except Exception as err:  # report instead of hanging the parent
        queue.put((rank, repr(err)))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gathers_every_record_once():
    if not torch.distributed.is_available() or "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs torch.distributed and the fork start method")
    ctx = multiprocessing.get_context("fork")
    queue, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, queue)) for rank in (0, 1)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    for rank in (0, 1):
        assert isinstance(results[rank], list), results[rank]
        assert results[rank] == [_record(i) for i in range(5)]  # the padded repeat of sample 0 counted once


def test_score_records_adds_blind_likelihood_and_count():
    records = [{"id": "0", "prediction": "B", "blind_prediction": "A", "references": ["B"],
                "meta": {"num_options": 2, "answer_index": 1}, K.LIKELIHOOD_CHOICE: 1, K.BLIND_LIKELIHOOD_CHOICE: 0},
               {"id": "1", "prediction": "A", "blind_prediction": "A", "references": ["B"],
                "meta": {"num_options": 2, "answer_index": 1}, K.LIKELIHOOD_CHOICE: 0, K.BLIND_LIKELIHOOD_CHOICE: 0}]
    metrics = score_records("mcq", records)
    assert metrics == {K.ACCURACY: 0.5, K.UNPARSED: 0.0, K.blind(K.ACCURACY): 0.0, K.blind(K.UNPARSED): 0.0,
                       K.LIKELIHOOD_ACCURACY: 0.5, K.blind(K.LIKELIHOOD_ACCURACY): 0.0, K.NUM_SAMPLES: 2.0}


def test_every_task_scores_under_the_declared_keys():
    predictions, references = ["a dog", "yes"], [["a dog"], ["no"]]
    assert tuple(score("vqa", predictions, references)) == K.VQA
    assert tuple(score("caption", predictions, references)) == K.CAPTION
    assert tuple(score("yesno", predictions, references)) == K.YESNO
    assert tuple(score("conversation", predictions, references)) == K.CONVERSATION
    assert tuple(score("mcq", ["A", "B"], [["A"], ["A"]])) == K.MCQ
    caption = score("caption", predictions, references, [{"objects": ["dog"]}, {"objects": []}])
    assert tuple(caption) == K.CAPTION + K.CHAIR
    mixture = score("instruct", predictions, references, [{"task": "conversation"}, {"task": "yesno"}])
    assert set(mixture) == {K.prefixed("conversation", k) for k in K.CONVERSATION} | {K.prefixed("yesno", k) for k in K.YESNO}
    assert score("vqa", [], []) == {}
    with pytest.raises(ValueError, match="valid tasks: 'vqa', 'caption', 'mcq'"):
        score("retrieval", ["a"], [["a"]])


def test_results_summary_and_files(tmp_path, capsys):
    facts = dict(preset="qp", encoder="e", llm="l", dataset="easy-vqa", fraction=0.1, seed=0, batch_size=4,
                 trainable_params=10, visual_tokens=4, eval_seconds=2.0, checkpoint=None, config_hash="abc")
    metrics = {K.ACCURACY: 0.5, K.NUM_SAMPLES: 4.0}
    summary = results_summary(metrics, task="vqa", train_seconds=10.0, train_samples=20, **facts)
    assert list(summary)[:3] == [K.ACCURACY, "num_eval_samples", "preset"] and K.NUM_SAMPLES not in summary
    assert summary["num_eval_questions"] == 4 and summary["eval_samples_per_second"] == 2.0
    assert summary["train_samples_per_second"] == 2.0
    plain = results_summary(metrics, task="caption", train_seconds=0.0, **facts)
    assert "num_eval_questions" not in plain and "train_samples" not in plain
    records = [_record(0), _record(1)]
    path = write_results(tmp_path / "run", summary, records)
    assert path == tmp_path / "run" / "results.json" and json.loads(path.read_text()) == summary
    assert [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()] == records
    assert "num_eval_samples" in capsys.readouterr().out
