"""The report: mean/std over seeds, DePALM's Score, rank, Markdown/CSV/PNG."""

from __future__ import annotations

import json

import pytest

from perceptlm.evaluation.report import aggregate, load_results, main


def _write(root, preset, dataset, seed, value, fraction=None, seconds=100.0, metric="cider"):
    path = root / f"{preset}-{dataset}-{fraction}-{seed}" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({metric: value, "preset": preset, "dataset": dataset, "fraction": fraction,
                                "seed": seed, "trainable_params": 1000, "train_seconds": seconds}))


def test_score_mean_std_and_rank(tmp_path):
    # Two mechanisms, two benchmarks (COCO CIDEr on coco-caption's scale; VQA accuracy in [0, 1]).
    for seed, (a, b) in enumerate([(1.30, 1.20), (1.32, 1.22)]):
        _write(tmp_path, "qp", "coco", seed, a)
        _write(tmp_path, "limber", "coco", seed, b)
    _write(tmp_path, "qp", "vqav2", 0, 0.60, metric="accuracy")
    _write(tmp_path, "limber", "vqav2", 0, 0.66, metric="accuracy")
    table = aggregate(load_results(tmp_path))
    assert table["columns"] == ["coco", "vqav2"]
    rows = {r["preset"]: r for r in table["rows"]}
    assert rows["qp"]["cells"]["coco"][0] == pytest.approx(131.0)
    assert rows["qp"]["cells"]["coco"][1] == pytest.approx(1.4142135, rel=1e-6)  # stdev of 130, 132
    # Score = mean(value / best * 100): qp = (100 + 60/66*100) / 2, limber = (121/131*100 + 100) / 2
    assert rows["qp"]["score"] == pytest.approx((100 + 60 / 66 * 100) / 2)
    assert rows["limber"]["score"] == pytest.approx((121 / 131 * 100 + 100) / 2)
    assert [r["preset"] for r in table["rows"]] == ["limber", "qp"] and rows["limber"]["rank"] == 1


def test_fraction_is_its_own_column_and_files_are_written(tmp_path, capsys):
    _write(tmp_path / "runs", "qp", "coco", 0, 1.3)
    _write(tmp_path / "runs", "qp", "coco", 0, 0.9, fraction=0.01)
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out" / "table")])
    assert "| 1 | qp | 130.00 ± 0.00 (n=1) | 90.00 ± 0.00 (n=1) | 100.0 |" in capsys.readouterr().out
    for suffix in (".md", ".csv", ".png"):
        assert (tmp_path / "out" / f"table{suffix}").stat().st_size > 0


def test_several_run_folders_make_one_table(tmp_path, capsys):
    _write(tmp_path / "a", "qp", "coco", 0, 1.3)
    _write(tmp_path / "b", "qp", "coco", 1, 1.1)
    # a folder inside another is read once
    assert len(load_results(tmp_path / "a", tmp_path / "b", tmp_path / "b" / "qp-coco-None-1")) == 2
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out" / "table")])
    assert "| 1 | qp | 120.00 ± 14.14 (n=2) | 100.0 |" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no results.json below .*c, .*d"):
        load_results(tmp_path / "c", tmp_path / "d")


def test_tasks_of_one_dataset_are_columns_and_baselines_have_margins(tmp_path, capsys):
    """easy-VQA's VQA and captions are two columns; the mismatched and blind baselines get their own
    table with the smallest per-seed margin (seed 1's 0.70 - 0.60 for VQA)."""
    for seed, (value, mismatched) in enumerate([(0.80, 0.50), (0.70, 0.60)]):
        path = tmp_path / f"vqa{seed}" / "results.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"accuracy": value, "mismatched_accuracy": mismatched, "blind_accuracy": 0.4,
                                    "preset": "qp", "dataset": "easy-vqa", "task": "vqa", "seed": seed,
                                    "visual_tokens": 32, "trainable_params": 10, "train_seconds": 5.0}))
    path = tmp_path / "caption" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"cider": 2.0, "preset": "qp", "dataset": "easy-vqa", "task": "caption", "seed": 0,
                                "fraction": 0.01, "visual_tokens": 32}))
    table = aggregate(load_results(tmp_path))
    assert table["columns"] == ["easy-vqa caption 0.01", "easy-vqa vqa"]
    baselines = table["rows"][0]["baselines"]["easy-vqa vqa"]
    assert baselines["mismatched"][0] == pytest.approx(55.0) and baselines["mismatched margin"] == pytest.approx(10.0)
    assert baselines["blind margin"] == pytest.approx(30.0) and "easy-vqa caption 0.01" not in table["rows"][0]["baselines"]
    main([str(tmp_path), "--out", str(tmp_path / "out" / "table")])
    out = capsys.readouterr().out
    assert "| 1 | qp | 200.00 ± 0.00 (n=1) | 75.00 ± 7.07 (n=2) | 100.0 | 10 | 32 | 5 |" in out
    assert "| qp | easy-vqa vqa | 75.00 ± 7.07 (n=2) | 55.00 ± 7.07 (n=2) | +10.00 | 40.00 ± 0.00 (n=2) | +30.00 |" in out
    header = (tmp_path / "out" / "table.csv").read_text().splitlines()[0]
    assert "easy-vqa vqa mismatched margin" in header and header.endswith("visual_tokens,train_seconds")


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        load_results(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "results.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"x/results.json: invalid JSON"):
        load_results(tmp_path)


def _write_instruct(root, configuration, seed, **metrics):
    path = root / configuration / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"task": "instruct", "preset": configuration.split("-")[0], "seed": seed, **metrics}))


def test_instruction_report_per_family_with_blind_gap_and_hallucination(tmp_path, capsys):
    from perceptlm.evaluation.report import aggregate_instruction

    runs = tmp_path / "runs"
    for seed, (mcq, blind_mcq) in enumerate([(0.9, 0.3), (0.8, 0.4)]):
        _write_instruct(runs, "llava-default", seed, mcq_accuracy=mcq, blind_mcq_accuracy=blind_mcq,
                        accuracy_likelihood=0.95, blind_accuracy_likelihood=0.25 + 0.1 * seed, yesno_accuracy=0.7, blind_yesno_accuracy=0.5, yesno_f1=0.6,
                        yesno_yes_ratio=0.3, caption_cider=2.5, blind_caption_cider=0.4,
                        caption_chair_i=float("nan") if seed else 0.1, caption_chair_s=0.2)
    _write_instruct(runs, "blip2-default", 0, mcq_accuracy=0.5, blind_mcq_accuracy=0.45)
    report = aggregate_instruction(load_results(runs))
    assert set(report["families"]) == {"mcq", "yesno", "caption"}  # no conversation results
    mcq = {r["configuration"]: r["cells"] for r in report["families"]["mcq"]["rows"]}
    assert mcq["llava-default"]["accuracy (letter)"] == pytest.approx((85.0, 7.0710678, 2))
    assert mcq["llava-default"]["gap"][0] == pytest.approx(50.0)  # (60 + 40) / 2
    assert mcq["blip2-default"]["gap"] == pytest.approx((5.0, 0.0, 1))
    assert mcq["llava-default"]["gap (likelihood)"][0] == pytest.approx(65.0)  # (70 + 60) / 2
    assert mcq["llava-default"]["blind (likelihood)"][:2] == pytest.approx((30.0, 7.0710678))
    assert mcq["blip2-default"]["gap (likelihood)"] is None  # no likelihood twin
    assert report["families"]["mcq"]["columns"][-2:] == ["blind (likelihood)", "gap (likelihood)"]
    assert "gap (likelihood)" not in report["families"]["yesno"]["columns"]
    caption = report["families"]["caption"]["rows"][0]["cells"]
    assert caption["CHAIR-i"] == pytest.approx((10.0, 0.0, 1))  # the nan of seed 1 (no mention) is left out
    assert caption["gap"][0] == pytest.approx(210.0)  # CIDEr x 100
    main([str(runs), "--out", str(tmp_path / "out" / "instruction")])
    text = (tmp_path / "out" / "instruction.md").read_text()
    assert "### yesno" in text and "| llava-default | 70.0 ± 0.0 (n=2) | 60.0 ± 0.0 (n=2) |" in text
    assert (tmp_path / "out" / "instruction.png").stat().st_size > 0
    lines = [line.split(",") for line in (tmp_path / "out" / "instruction.csv").read_text().splitlines()]
    gap = next(line for line in lines if line[:3] == ["mcq", "blip2-default", "gap"])
    assert float(gap[3]) == pytest.approx(5.0) and gap[5] == "1"
