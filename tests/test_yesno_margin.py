"""The yes/no margin diagnostic of the instruction comparison (experiments/paper/instruction/yesno_margin.py)."""

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "experiments/paper/instruction/yesno_margin.py"
spec = importlib.util.spec_from_file_location("yesno_margin", PATH)
yesno_margin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(yesno_margin)
CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"


def test_auc_counts_pairs_and_ties():
    # present {3, 2} against absent {1, 2}: 3 > 1, 3 > 2, 2 > 1 and one tie (half)
    assert yesno_margin.auc([3.0, 1.0, 2.0, 2.0], [True, False, True, False]) == pytest.approx(87.5)
    assert yesno_margin.auc([0.0, 1.0], [True, False]) == 0.0
    with pytest.raises(ValueError, match="1 present, 0 absent"):
        yesno_margin.auc([1.0], [True])


def test_margins_of_a_trained_run(tmp_path, capsys):
    from perceptlm.cli import cli

    run = tmp_path / "run"
    cli(["fit", "--config", str(CONFIGS / "mechanisms" / "llava.yaml"), "--config", str(CONFIGS / "data" / "easy_instruct.yaml"),
         "--config", str(CONFIGS / "trainer" / "cpu.yaml"),
         "--model.init_args.encoder", "test-tiny-vit", "--model.init_args.llm", "test-tiny-llama",
         "--data.init_args.limit", "8", "--data.init_args.batch_size", "4", "--data.init_args.test_images", "4",
         "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(run),
         "--trainer.logger", "false", "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
         "--trainer.callbacks.dirpath", str(run / "checkpoints"), "--trainer.callbacks.save_last", "true",
         "--trainer.callbacks.save_top_k", "0"])
    model, datamodule = yesno_margin.load_run(run)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all(torch.equal(model.state_dict()[k.removeprefix("model.")], v) for k, v in state.items())  # trained
    rows = yesno_margin.margins(model, datamodule)
    assert len(rows) == 16 and Counter(r["probe"] for r in rows) == {p: 4 for p in ("shape-yes", "shape-no", "color-yes", "color-no")}
    assert all(r["present"] == r["probe"].endswith("yes") for r in rows)
    # perception zeroed: the margin depends on the question alone; seeing, on the image too
    questions = {s.id: s.prompt for s in datamodule.datasets["test"].samples}
    by_question: dict[str, list[dict]] = {}
    for row in rows:
        by_question.setdefault(questions[row["id"]], []).append(row)
    repeated = [group for group in by_question.values() if len(group) > 1]
    assert repeated
    for group in repeated:
        assert max(r["blind_margin"] for r in group) - min(r["blind_margin"] for r in group) < 1e-4
    assert any(max(r["margin"] for r in g) - min(r["margin"] for r in g) > 1e-4 for g in repeated)
    summary = yesno_margin.summary(rows)
    assert summary["AUC all"] == yesno_margin.auc([r["margin"] for r in rows], [r["present"] for r in rows])
    present = [r["blind_margin"] for r in rows if r["present"]]
    assert summary["blind margin present"] == pytest.approx(sum(present) / len(present))
    text = yesno_margin.main([str(run), "--out", str(tmp_path / "margins.md")])
    assert (tmp_path / "margins.md").read_text() == text and f"| {run} | {summary['AUC all']:.1f} |" in text


def test_a_folder_without_a_run_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config.yaml; expected a test run's folder"):
        yesno_margin.load_run(tmp_path)
