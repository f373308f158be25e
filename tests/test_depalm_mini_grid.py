"""experiments/paper/depalm/mini: the committed commands are what the generator writes, every column
and every mechanism parses with the real CLI, and committed records are portable."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "experiments/paper/depalm/mini"


@pytest.fixture(scope="module")
def grid():
    spec = importlib.util.spec_from_file_location("depalm_mini_grid", MINI / "grid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def option(args: list[str], name: str) -> str:
    return args[len(args) - 1 - args[::-1].index(name) + 1]


def test_committed_commands_are_current_and_cover_the_table(grid, tmp_path):
    assert grid.write(tmp_path).read_text() == (MINI / "commands.txt").read_text()
    cells = grid.cells()
    assert len(cells) == len(set(cells)) == 11 * 6 * 3
    lines = [line for line in (MINI / "commands.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(lines) == len(cells)
    for line, cell in zip(lines, cells):
        fit, test = (shlex.split(part)[1:] for part in line.split(" && "))
        assert fit[0] == "fit" and test[0] == "test"
        assert option(test, "--ckpt_path") == f"{cell.run_dir}/checkpoints/last.ckpt"
        assert option(fit, "--trainer.callbacks.dirpath") == f"{cell.run_dir}/checkpoints"
        for args in (fit, test):  # every run: the feature cache, no augmentation, both baselines
            assert option(args, "--data.init_args.feature_cache") == "auto"
            assert option(args, "--data.init_args.augment") == "none"
            assert option(args, "--model.init_args.eval_mismatched") == "true"
            assert option(args, "--seed_everything") == str(cell.seed) == option(args, "--data.init_args.seed")


def test_recipes_follow_the_paper_columns_at_scale(grid):
    """Learning rate, clipping and effective batch are the released script's; the budget is a number of
    samples; widths tied to 1024 / 4096 are scaled to SmolLM2's 576."""
    assert grid.scaled_width(1024) == 144 and grid.scaled_width(768) == 112
    c_attn = grid.fit_args(grid.Cell("depalm-c-attn", "vqa", 0))
    released = grid.PAPER.recipe("vqav2", "depalm-c-attn")
    assert (released.batch_size, released.accumulation) == (8, 2)  # micro-batch 8 x 2 -> one batch of 16
    assert option(c_attn, "--trainer.accumulate_grad_batches") == "1" and option(c_attn, "--trainer.gradient_clip_val") == "0.05"
    assert option(c_attn, "--data.init_args.batch_size") == "16"
    assert int(option(c_attn, "--trainer.max_steps")) * 16 == grid.COLUMNS["vqa"].samples
    assert json.loads(option(c_attn, "--model.init_args.injection_options")) == {"width": 144}
    limber = grid.fit_args(grid.Cell("limber-1", "audio", 0))
    assert json.loads(option(limber, "--model.init_args.features")) == {"seconds": 4.0, "layers": 1, "tokens": "mean"}
    qp_inner = grid.fit_args(grid.Cell("depalm-qp-inner", "caption", 0))
    assert json.loads(option(qp_inner, "--model.init_args.features")) == {"layers": 1}  # EfficientNet: one layer
    one_pct = grid.fit_args(grid.Cell("depalm-r-qpmapper", "vqa-1pct", 0))
    assert json.loads(option(one_pct, "--model.init_args.connector")) == {"width": 112, "global_layers": 1}
    assert option(one_pct, "--data.init_args.fraction") == "0.01"
    paper = grid.PAPER.recipe("vqav2", "mapl")
    assert option(grid.fit_args(grid.Cell("mapl", "vqa", 0)), "--model.init_args.lr") == f"{paper.lr * 2.5:g}" == "0.002"


def test_every_column_and_mechanism_parses_with_the_real_cli(grid, capsys):
    from perceptlm.cli import cli

    chosen = [grid.Cell(m, c, 1) for m, c in zip(grid.MECHANISMS, [*grid.COLUMNS] * 2)]
    for cell in chosen:
        for args in (grid.fit_args(cell), grid.test_args(cell)):
            with pytest.raises(SystemExit) as exit_info:
                cli([*args, "--print_config"])
            assert exit_info.value.code in (0, None)
            printed = yaml.safe_load(capsys.readouterr().out)
            model, data = printed["model"]["init_args"], printed["data"]["init_args"]
            column = grid.COLUMNS[cell.column]
            assert model["preset"] == cell.mechanism and model["encoder"] == column.encoder
            assert model["features"] == grid.features(cell) and model["eval_mismatched"] is True
            assert data["feature_cache"] == "auto" and data["seed"] == 1
            assert data["fraction"] == (None if column.fraction == 1.0 else column.fraction)
            if args[0] == "fit":
                assert printed["trainer"]["max_steps"] == grid.steps(cell)


def test_collected_records_are_portable(grid, tmp_path):
    cell = grid.Cell("limber-1", "vqa", 0)
    run = tmp_path / cell.run_dir
    run.mkdir(parents=True)
    site = "/opt/venv/lib/python3.11/site-packages/easy_vqa/data/test/images/3.png"
    (run / "results.json").write_text(json.dumps({"accuracy": 0.5, "checkpoint": f"{grid.ROOT}/{cell.run_dir}/last.ckpt"}))
    (run / "predictions.jsonl").write_text(json.dumps({"id": "a", "media": site, "mismatched_media": site}) + "\n")
    target = grid.collect(cell, tmp_path, tmp_path / "records")
    results = json.loads((target / "results.json").read_text())
    assert results["checkpoint"] == f"{cell.run_dir}/last.ckpt" and results["column"] == "vqa"
    record = json.loads((target / "predictions.jsonl").read_text())
    assert record["media"] == record["mismatched_media"] == "easy_vqa/data/test/images/3.png"
    assert grid.portable("/home/u/.cache/perceptlm/synth_audio/test/clip_001.wav", grid.ROOT) == "synth_audio/test/clip_001.wav"
    inside = f"{grid.ROOT}/.venv/lib/python3.11/site-packages/easy_vqa/data/test/images/3.png"  # a venv in the checkout
    assert grid.portable(inside, grid.ROOT) == "easy_vqa/data/test/images/3.png"
    for path in sorted((MINI / "results" / "records").glob("*/*/seed*/predictions.jsonl")):  # committed: portable
        for line in path.read_text().splitlines():
            media = [json.loads(line).get(key) for key in ("media", "mismatched_media")]
            assert all(m is None or not (m.startswith("/") or "site-packages" in m) for m in media), (path, media)
    with pytest.raises(ValueError, match="no portable form"):
        grid.portable("/somewhere/else.png", grid.ROOT)


def test_committed_report_regenerates_from_the_committed_records(tmp_path, capsys):
    """results/table.{md,csv} and breakdown.md are what the report and breakdown write from records/."""
    from perceptlm.evaluation.report import main as report

    records = MINI / "results" / "records"
    assert sorted(records.glob("*/*/seed*/results.json")), "no committed records"
    report([str(records), "--out", str(tmp_path / "table")])
    for suffix in (".md", ".csv"):
        assert (tmp_path / f"table{suffix}").read_text() == (MINI / "results" / f"table{suffix}").read_text()
    spec = importlib.util.spec_from_file_location("depalm_mini_breakdown", MINI / "breakdown.py")
    breakdown = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(breakdown)
    breakdown.main(["--records", str(records), "--out", str(tmp_path / "breakdown.md")])
    assert (tmp_path / "breakdown.md").read_text() == (MINI / "results" / "breakdown.md").read_text()
    capsys.readouterr()


def test_breakdown_scores_each_question_type(tmp_path):
    spec = importlib.util.spec_from_file_location("depalm_mini_breakdown", MINI / "breakdown.py")
    breakdown = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(breakdown)
    run = tmp_path / "vqa" / "qp" / "seed0"
    run.mkdir(parents=True)
    rows = [("shape", "circle", "circle", "triangle", "x"), ("shape", "triangle", "triangle", "triangle", "x"),
            ("color", "red", "blue", "red", "red"), ("yesno", "yes", "yes.", "no", "yes")]
    (run / "predictions.jsonl").write_text("\n".join(json.dumps(
        {"references": [ref], "prediction": p, "mismatched_prediction": m, "blind_prediction": b,
         "meta": {"question_type": kind}}) for kind, ref, p, m, b in rows) + "\n")
    assert breakdown.table(tmp_path).splitlines()[-1] == \
        "| vqa | qp | 1 | 100.0 | 50.0 | 0.0 | 0.0 | 100.0 | 100.0 | 100.0 | 0.0 | 100.0 |"
    (run / "predictions.jsonl").write_text(json.dumps({"references": ["a"], "prediction": "a"}) + "\n")
    with pytest.raises(ValueError, match="predictions.jsonl:1: no question_type"):
        breakdown.table(tmp_path)
