"""Evaluation records and result files.

Each rank collects ``(id, prompt, prediction, references)`` records; at the end of the epoch the
records are gathered, de-duplicated by id (distributed samplers pad), and scored once
(:func:`perceptlm.evaluation.scoring.score_records`), so the metric equals the single-process value
whatever the number of ranks or the batch size. A test run writes ``results.json`` (the metrics and
what defines the run: :func:`results_summary`) and ``predictions.jsonl`` (the records).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch.distributed as dist

from perceptlm.evaluation import keys as K


def gather_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' records, each id once, sorted by id."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[list[dict[str, Any]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, records)
        records = [r for part in gathered for r in (part or [])]
    unique = {str(r["id"]): r for r in records}
    return [unique[k] for k in sorted(unique, key=_natural)]


def _natural(key: str) -> tuple[int, Any]:
    return (0, int(key)) if key.isdigit() else (1, key)


def config_hash(model: dict[str, Any], data: dict[str, Any]) -> str:
    """Short hash of what defines a run: the model's hyper-parameters and the data selection."""
    blob = json.dumps({"model": model, "data": data}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def benchmark_label(dataset: str | None, task: str | None, fraction: float | None) -> str:
    """A run's benchmark as dashboards group it: ``"dataset task"``, with the training fraction when
    below 1 (``"easy-vqa vqa 0.01"``)."""
    label = " ".join(str(part) for part in (dataset, task) if part)
    return f"{label} {fraction:g}" if fraction not in (None, 1, 1.0) else label


def baseline_gaps(metrics: dict[str, float]) -> dict[str, float]:
    """Each metric minus its baselines: ``{metric}_gap_mismatched`` (against ``mismatched_{metric}``)
    and ``{metric}_gap_blind`` (against ``blind_{metric}``), for the metrics that have them."""
    gaps = {}
    for key, value in metrics.items():
        for prefix in (K.MISMATCHED, K.BLIND):
            baseline = metrics.get(prefix + key)
            if baseline is not None and not key.startswith((K.MISMATCHED, K.BLIND)):
                gaps[f"{key}_gap_{prefix.rstrip('_')}"] = float(value) - float(baseline)
    return gaps


def results_summary(metrics: dict[str, float], *, preset: str, encoder: str, llm: str, dataset: str | None,
                    task: str, fraction: float | None, seed: int | None, batch_size: int | None,
                    trainable_params: int, visual_tokens: int, train_seconds: float, eval_seconds: float,
                    checkpoint: str | None, config_hash: str, train_samples: int = 0) -> dict[str, Any]:
    """The ``results.json`` of a test run: its metrics (``num_samples`` as ``num_eval_samples``), the
    run's configuration, and train / evaluation times and throughputs."""
    num_samples = metrics[K.NUM_SAMPLES]
    summary: dict[str, Any] = {
        **{k: v for k, v in metrics.items() if k != K.NUM_SAMPLES},
        "num_eval_samples": int(num_samples),
        "preset": preset,
        "encoder": encoder,
        "llm": llm,
        "dataset": dataset,
        "task": task,
        "fraction": fraction,
        "seed": seed,
        "batch_size": batch_size,
        "trainable_params": trainable_params,
        "visual_tokens": visual_tokens,
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "eval_samples_per_second": round(num_samples / max(eval_seconds, 1e-9), 2),
        "checkpoint": checkpoint,
        "config_hash": config_hash,
    }
    if task == "vqa":
        summary["num_eval_questions"] = summary["num_eval_samples"]
    if train_samples and train_seconds:
        summary["train_samples"] = train_samples
        summary["train_samples_per_second"] = round(train_samples / train_seconds, 2)
    return summary


def write_results(run_dir: str | Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    """``results.json`` (``summary``) + ``predictions.jsonl`` (``records``) in ``run_dir``; prints
    the summary as a table. Returns the path of ``results.json``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(run_dir / "predictions.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    width = max(len(k) for k in summary)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in summary.items()))
    print(f"results: {run_dir / 'results.json'}  predictions: {run_dir / 'predictions.jsonl'}")
    return run_dir / "results.json"
