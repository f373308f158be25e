"""Distributed evaluation with 2 CPU processes (DDP, gloo): every sample scored exactly once and the
same predictions and metrics as a single process, on an evaluation set of odd size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "experiments" / "easyvqa" / "depalm_qp_l0.yaml"


def _run(run_dir: Path, devices: int, extra: list[str]) -> dict:
    command = [
        sys.executable, "-m", "perceptlm.cli", "test", "--config", str(CONFIG),
        "--model.init_args.encoder", "test-tiny-vit", "--model.init_args.llm", "test-tiny-llama",
        "--model.init_args.connector", '{"width": 64, "num_queries": 4}',
        "--data.init_args.test_limit", "7", "--data.init_args.eval_batch_size", "2",
        "--trainer.devices", str(devices), "--trainer.logger", "false", "--trainer.callbacks", "[]",
        "--trainer.default_root_dir", str(run_dir), *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return {"results": results, "predictions": predictions}


@pytest.mark.slow
def test_two_process_evaluation_scores_each_sample_once(tmp_path):
    single = _run(tmp_path / "single", 1, [])
    double = _run(tmp_path / "ddp", 2, ["--trainer.strategy", "ddp"])
    ids = [p["id"] for p in double["predictions"]]
    assert len(ids) == len(set(ids)) == 7
    assert double["results"]["num_eval_samples"] == single["results"]["num_eval_samples"] == 7
    assert {p["id"]: p["prediction"] for p in double["predictions"]} == {
        p["id"]: p["prediction"] for p in single["predictions"]
    }
    assert double["results"]["accuracy"] == single["results"]["accuracy"]
