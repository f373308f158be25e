"""The report: mean/std over seeds, DePALM's Score, rank, Markdown/CSV/PNG."""

from __future__ import annotations

import json

import pytest

from perceptlm.report import aggregate, load_results, main


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


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        load_results(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "results.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"x/results.json: invalid JSON"):
        load_results(tmp_path)
