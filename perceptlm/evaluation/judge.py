"""LLM-judge scoring of LLaVA-Bench (Liu et al. 2023, "Visual Instruction Tuning" §5; Garg & Bas 2023).

The protocol of LLaVA's ``eval_gpt_review_bench.py`` / ``summarize_gpt_review.py``: the judge reads
a textual description of the image, the question, the reference answer as "Assistant 1" and the
model's answer as "Assistant 2", and rates both 1-10 on the first line of its reply; per category
(conv / detail / complex, and all) the relative score is ``100 * sum(model) / sum(reference)``.
Judgements whose first line is not two numbers are left out and counted (``unparsed``; LLaVA
averages them in as -1).

Any OpenAI-compatible chat-completions endpoint works, called with the standard library only
(``urllib.request``), with a timeout and retries. Settings come from :class:`JudgeConfig` or the
environment: ``OPENAI_BASE_URL`` (e.g. ``https://api.openai.com/v1``), ``OPENAI_API_KEY``,
``PERCEPTLM_JUDGE_MODEL``. Replies are cached on disk under a hash of the request body, so a re-run
sends nothing. Without an endpoint and a model, categories are reported as not scored (None).

``python -m perceptlm.evaluation.judge RUN_DIR/predictions.jsonl`` re-scores saved LLaVA-Bench predictions.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request

from perceptlm.paths import cache_dir
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
ROLE = "Assistant"
_RATE = ("Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
         "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
         "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
         "respectively. The two scores are separated by a space.\nIn the subsequent line, please provide a "
         "comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the order in "
         "which the responses were presented does not affect your judgment.")
_ASK = ("We would like to request your feedback on the performance of two AI assistants in response to the user "
        "question displayed above. The user asks the question on observing an image. For your reference, the visual "
        "content in the image is represented with ")
# LLaVA's rule.json: "llava_bench_{conv,detail,complex}" (in-the-wild) and "{conv,detail,complex}" (COCO).
RULES = {
    "in-the-wild": _ASK + "a few sentences describing the image. \n" + _RATE,
    "coco": _ASK + ("five descriptive sentences describing the same image and the bounding box coordinates of each "
                    "object in the scene. These coordinates are in the form of bounding boxes, represented as (x1, y1, "
                    "x2, y2) with floating numbers ranging from 0 to 1. These values correspond to the top left x, top "
                    "left y, bottom right x, and bottom right y. \n") + _RATE,
}
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"


class JudgeError(RuntimeError):
    """The endpoint failed (after retries) or replied in an unexpected format."""


@dataclass
class JudgeConfig:
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    cache_dir: str | None = None
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0  # seconds, doubled after each failed try
    temperature: float = 0.2
    max_tokens: int = 1024

    def resolved(self) -> "JudgeConfig":
        """Missing fields from the environment (the key only ever from here or the caller)."""
        key = self.api_key or os.environ.get("OPENAI_API_KEY")
        base = self.base_url or os.environ.get("OPENAI_BASE_URL") or (DEFAULT_OPENAI_URL if key else None)
        return replace(self, base_url=base, api_key=key, model=self.model or os.environ.get("PERCEPTLM_JUDGE_MODEL"),
                       cache_dir=self.cache_dir or str(cache_dir() / "judge"))


def judge_prompt(context: str, question: str, reference: str, answer: str, layout: str = "in-the-wild") -> str:
    """The user message of one judgement (LLaVA's layout of context, question, two answers, rule)."""
    if layout not in RULES:
        raise ValueError(f"unknown LLaVA-Bench layout {layout!r}; valid: {sorted(RULES)}")
    return (f"[Context]\n{context}\n\n[Question]\n{question}\n\n"
            f"[{ROLE} 1]\n{reference}\n\n[End of {ROLE} 1]\n\n[{ROLE} 2]\n{answer}\n\n[End of {ROLE} 2]\n\n"
            f"[System]\n{RULES[layout]}\n\n")


def parse_scores(review: str) -> tuple[float, float] | None:
    """(reference score, model score) from the first line, LLaVA's ``parse_score`` rules: commas
    read as spaces, split on single spaces, exactly two numbers; else None."""
    parts = review.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


class Judge:
    """A chat-completions client with an on-disk reply cache; ``requests`` counts HTTP calls."""

    def __init__(self, config: JudgeConfig | None = None) -> None:
        self.config = (config or JudgeConfig()).resolved()
        self.requests = 0

    @property
    def unavailable(self) -> str | None:
        """Why this judge cannot score (no endpoint / no model), or None."""
        if not self.config.base_url:
            return "no judge endpoint: set OPENAI_BASE_URL (and OPENAI_API_KEY) or judge.base_url"
        if not self.config.model:
            return "no judge model: set PERCEPTLM_JUDGE_MODEL or judge.model"
        return None

    def body(self, content: str) -> dict[str, Any]:
        return {"model": self.config.model, "messages": [{"role": "system", "content": SYSTEM},
                                                         {"role": "user", "content": content}],
                "temperature": self.config.temperature, "max_tokens": self.config.max_tokens}

    def _cache_path(self, body: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        return Path(self.config.cache_dir) / digest[:2] / f"{digest}.json"

    def complete(self, content: str) -> str:
        """The judge's reply to one user message (from the cache when this exact request was made)."""
        if self.unavailable:
            raise JudgeError(self.unavailable)
        body = self.body(content)
        path = self._cache_path(body)
        if path.is_file():
            return json.loads(path.read_text())["reply"]
        reply = self._post(body)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".tmp{os.getpid()}")
        staging.write_text(json.dumps({"request": body, "reply": reply}, ensure_ascii=False))
        staging.replace(path)
        return reply

    def _post(self, body: dict[str, Any]) -> str:
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        data = json.dumps(body).encode()
        error: Exception | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(self.config.backoff * 2 ** (attempt - 1))
            self.requests += 1
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                    payload = json.loads(response.read().decode())
            except urllib.error.HTTPError as failure:
                error = failure
                if failure.code != 429 and failure.code < 500:  # a client error does not heal by retrying
                    raise JudgeError(f"{url}: HTTP {failure.code} {failure.reason}") from None
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as failure:
                error = failure
                continue
            try:
                return str(payload["choices"][0]["message"]["content"])
            except (KeyError, IndexError, TypeError):
                raise JudgeError(f"{url}: unexpected reply {str(payload)[:200]!r}; expected choices[0].message.content") from None
        raise JudgeError(f"{url}: no reply after {self.config.retries + 1} tries ({error})")


def llava_bench_items(predictions: Sequence[str], references: Sequence[list[str]],
                      meta: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Judge items from LLaVA-Bench records, and the judge settings the datamodule attached."""
    items = [{"category": info["category"], "question": info["question"], "context": info["context"],
              "layout": info.get("layout", "in-the-wild"), "reference": refs[0], "prediction": prediction}
             for prediction, refs, info in zip(predictions, references, meta)]
    settings = next((dict(info["judge"]) for info in meta if info.get("judge")), {})
    return items, settings


def score_llava_bench(items: list[dict[str, Any]], judge: Judge) -> dict[str, dict[str, float] | None]:
    """Per category (conv, detail, complex present in ``items``, and ``all``): ``relative``
    (100 * sum model / sum reference), mean ``model`` and ``reference`` scores, ``count`` and
    ``unparsed``; None for a category that could not be scored (no judge, or a failed request).

    ``items``: dicts with ``category``, ``question``, ``context``, ``reference``, ``prediction`` and
    optionally ``layout`` (``in-the-wild`` | ``coco``)."""
    categories = sorted({item["category"] for item in items})
    if judge.unavailable:
        print(f"LLaVA-Bench not scored: {judge.unavailable}")
        return {c: None for c in [*categories, "all"]}
    pairs: dict[str, list[tuple[float, float]]] = {c: [] for c in categories}
    unparsed = dict.fromkeys(categories, 0)
    failed: set[str] = set()
    down: str | None = None
    for item in items:
        category = item["category"]
        if down is not None:
            failed.add(category)
            continue
        content = judge_prompt(item["context"], item["question"], item["reference"], item["prediction"],
                               item.get("layout", "in-the-wild"))
        try:
            review = judge.complete(content)
        except JudgeError as error:
            print(f"LLaVA-Bench judge failed ({error}); category {category!r} not scored")
            failed.add(category)
            down = str(error) if "no reply" in str(error) else None  # an unreachable endpoint: stop asking
            continue
        scores = parse_scores(review)
        if scores is None:
            unparsed[category] += 1
        else:
            pairs[category].append(scores)

    def summary(values: list[tuple[float, float]], bad: int) -> dict[str, float] | None:
        reference = sum(r for r, _ in values)
        if not values or reference == 0:
            return None
        model = sum(m for _, m in values)
        return {"relative": 100.0 * model / reference, "model": model / len(values),
                "reference": reference / len(values), "count": float(len(values)), "unparsed": float(bad)}

    out = {c: None if c in failed else summary(pairs[c], unparsed[c]) for c in categories}
    everything = [p for c in categories for p in pairs[c]]
    out["all"] = None if failed else summary(everything, sum(unparsed.values()))
    return out


def main(argv: list[str] | None = None) -> None:
    """Re-score a LLaVA-Bench ``predictions.jsonl`` (records with ``meta`` from the datamodule)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m perceptlm.evaluation.judge", description=main.__doc__)
    parser.add_argument("predictions")
    parser.add_argument("--base-url")
    parser.add_argument("--model")
    parser.add_argument("--cache-dir")
    options = parser.parse_args(argv)
    records = [json.loads(line) for line in Path(options.predictions).read_text().splitlines() if line.strip()]
    items, settings = llava_bench_items([r["prediction"] for r in records], [r["references"] for r in records],
                                        [r.get("meta") or {} for r in records])
    config = JudgeConfig(**{**settings, **{k: v for k, v in (("base_url", options.base_url), ("model", options.model),
                                                             ("cache_dir", options.cache_dir)) if v}})
    for category, result in score_llava_bench(items, Judge(config)).items():
        print(category, "not scored" if result is None else f"{result['relative']:.1f}")


if __name__ == "__main__":  # pragma: no cover
    main()
