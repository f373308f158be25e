"""One W&B run per experiment: ``perceptlm fit`` then ``perceptlm test`` on its checkpoint log into one
run (read back from the offline transaction logs), with the fields a dashboard filters by."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from wandb_offline import offline_runs

from perceptlm.cli import cli, main
from perceptlm.evaluation import baseline_gaps
from perceptlm.training.loggers import AutoWandbLogger, checkpoint_run

CONFIG = Path(__file__).parents[1] / "experiments" / "easyvqa" / "depalm_qp_l0.yaml"


def _args(run_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(CONFIG), "--model.init_args.encoder", "test-tiny-vit",
            "--model.init_args.llm", "test-tiny-llama", "--model.init_args.connector", '{"width": 64, "num_queries": 4}',
            "--model.init_args.eval_mismatched", "true", "--data.init_args.limit", "16",
            "--data.init_args.test_limit", "6", "--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "3",
            "--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1", "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.logger.init_args.mode", "offline",
            "--trainer.logger.init_args.group", "study", "--trainer.logger.init_args.name", "cell-seed0",
            "--trainer.callbacks.init_args.dirpath", str(run_dir / "checkpoints"), *extra]


def test_fit_then_test_is_one_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    cli(["fit", *_args(run_dir, "--trainer.logger.init_args.job_type", "fit")])
    identity = checkpoint_run(run_dir / "checkpoints" / "last.ckpt")
    assert identity["group"] == "study" and identity["name"] == "cell-seed0"
    cli(["test", *_args(run_dir, "--trainer.logger.init_args.job_type", "test"), "--ckpt_path", "last"])

    fit, test = offline_runs(run_dir)  # two offline parts that `wandb sync` uploads into one run
    assert fit["folder"] != test["folder"]
    assert fit["id"] == test["id"] == identity["id"]
    assert (fit["job_type"], test["job_type"]) == ("fit", "test")
    assert fit["group"] == test["group"] == "study" and test["name"] == "cell-seed0"
    assert [row["train/loss"] for row in fit["history"] if "train/loss" in row], "training curve in the run"
    for part in (fit, test):  # filterable config fields, in both parts
        config = part["config"]
        assert config["mechanism"] == "depalm-qp-l0" and config["dataset"] == "easy-vqa" and config["task"] == "vqa"
        assert config["benchmark"] == "easy-vqa vqa" and config["cell"] == "easy-vqa vqa | depalm-qp-l0"
        assert config["seed"] == 0 and config["fraction"] is None and config["llm"] == "test-tiny-llama"
        assert config["trainable_params"] > 0 and config["visual_tokens"] == 4
    summary = test["summary"]
    gap = summary["test/accuracy"] - summary["test/mismatched_accuracy"]
    assert summary["test/accuracy_gap_mismatched"] == pytest.approx(gap)
    assert summary["test/accuracy_gap_blind"] == pytest.approx(summary["test/accuracy"] - summary["test/blind_accuracy"])
    assert summary["test/train_seconds"] > 0
    assert list(test["folder"].glob("files/media/table/test/predictions*.table.json")), "predictions table in the run"

    _dashboard_matches_the_run(tmp_path, run_dir, test)

    cli(["test", *_args(run_dir, "--trainer.logger.init_args.new_run", "true"), "--ckpt_path", "last"])
    ids = [part["id"] for part in offline_runs(run_dir)]
    assert len(ids) == 3 and ids[2] != identity["id"], "new_run starts a run of its own"


def _panels(spec: dict) -> dict[str, list[dict]]:
    return {section["name"]: section["panels"] for section in spec["spec"]["section"]["panelBankConfig"]["sections"]}


def _dashboard_matches_the_run(tmp_path: Path, run_dir: Path, run: dict) -> None:
    """`perceptlm dashboard` offline, from the run's results.json: every panel reads a key the run
    logged, and the runset is the group, grouped by the cell's config field."""
    out = tmp_path / "dashboard.json"
    main(["dashboard", "--group", "study", "--project", "perceptlm", "--runs", str(run_dir), "--out", str(out)])
    spec = json.loads(out.read_text())
    runset = spec["spec"]["section"]["runSets"][0]
    assert runset["filters"]["filters"] == [{"key": {"section": "run", "name": "group"}, "op": "=", "value": "study",
                                             "disabled": False}]
    assert runset["grouping"] == [{"section": "config", "name": "cell.value"}] and "cell" in run["config"]
    panels = _panels(spec)
    summary_keys = [key.split(".", 1)[1] for section in ("Scores per cell", "Gap over the baselines")
                    for panel in panels[section] for key in panel["config"].get("metrics", [])]
    assert summary_keys == ["test/accuracy", "test/accuracy_gap_mismatched", "test/accuracy_gap_blind"]
    assert all(panel["config"]["groupBy"] == "cell.value" for section in ("Scores per cell", "Gap over the baselines")
               for panel in panels[section] if panel["viewType"] == "Bar Chart")
    (scatter,) = panels["Score against training time"]
    summary_keys += [scatter["config"]["xAxis"].split(":", 1)[1], scatter["config"]["yAxis"].split(":", 1)[1]]
    assert all(key in run["summary"] for key in summary_keys), set(summary_keys) - set(run["summary"])
    curves = [key for panel in panels["Training"] for key in panel["config"]["metrics"]]
    logged = {key for part in offline_runs(run_dir)[:1] for row in part["history"] for key in row}
    assert "train/loss" in curves and set(curves) <= logged
    assert '"test/predictions"' in json.dumps(panels["Predictions"])


def test_dashboard_needs_metrics_or_an_account(tmp_path, monkeypatch):
    from perceptlm.evaluation import dashboard

    with pytest.raises(ValueError, match="no headline metric"):
        dashboard.workspace("g", "e", "p", [])
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(SystemExit, match="give --runs"):
        main(["dashboard", "--group", "g"])
    records = [{"cider": 0.5, "accuracy": None}, {"accuracy": 0.4, "mismatched_accuracy": 0.3}]
    assert dashboard.metrics_of_records(records) == ["cider", "accuracy"]
    assert dashboard.baselines_of(records, "accuracy") == ["mismatched"] and dashboard.baselines_of(records, "cider") == []


def test_continue_run_only_before_the_run_starts(tmp_path):
    identity = {"id": "abc123", "project": "p", "entity": None, "name": "n", "group": "g", "tags": ["t"]}
    logger = AutoWandbLogger(save_dir=str(tmp_path), mode="offline")
    assert logger.continue_run(identity)
    assert logger._wandb_init["id"] == "abc123" and logger._wandb_init["group"] == "g" and logger.version == "abc123"
    assert not AutoWandbLogger(save_dir=str(tmp_path), mode="offline", new_run=True).continue_run(identity)
    assert not AutoWandbLogger(save_dir=str(tmp_path), mode="offline").continue_run({"id": None})


def test_baseline_gaps():
    metrics = {"accuracy": 0.8, "mismatched_accuracy": 0.5, "blind_accuracy": 0.6, "color_accuracy": 0.7,
               "mismatched_color_accuracy": 0.2, "cider": 1.0}
    assert baseline_gaps(metrics) == pytest.approx({"accuracy_gap_mismatched": 0.3, "accuracy_gap_blind": 0.2,
                                                    "color_accuracy_gap_mismatched": 0.5})
