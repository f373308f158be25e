"""The real CLI end to end on tiny backbones: fit, checkpoint, test, result files, W&B offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from perceptlm.cli import cli

CONFIG = Path(__file__).parents[1] / "experiments" / "easyvqa" / "depalm_qp_l0.yaml"


def _args(run_dir: Path) -> list[str]:
    return [
        "--config", str(CONFIG),
        "--model.init_args.encoder", "test-tiny-vit",
        "--model.init_args.llm", "test-tiny-llama",
        "--model.init_args.connector", '{"width": 64, "num_queries": 4}',
        "--data.init_args.limit", "16",
        "--data.init_args.test_limit", "7",
        "--data.init_args.batch_size", "4",
        "--data.init_args.eval_batch_size", "3",
        "--trainer.max_steps", "2",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir),
        "--trainer.callbacks.init_args.dirpath", str(run_dir / "checkpoints"),
    ]


def test_fit_then_test_writes_results(tmp_path):
    run_dir = tmp_path / "run"
    cli(["fit", *_args(run_dir)])
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    keys = set(checkpoint["state_dict"])
    assert keys and all(k.startswith(("model.connector.", "model.prompt.")) for k in keys)
    assert checkpoint["global_step"] == 2 and checkpoint["perceptlm"]["train_samples"] == 8
    assert "optimizer_states" in checkpoint and checkpoint["lr_schedulers"]

    cli(["test", *_args(run_dir), "--ckpt_path", "last"])
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("accuracy", "blind_accuracy", "train_seconds", "eval_seconds", "trainable_params",
                "num_eval_questions"):
        assert key in results, key
    assert results["num_eval_questions"] == 7 and 0.0 <= results["accuracy"] <= 1.0
    assert results["train_seconds"] > 0 and results["preset"] == "depalm-qp-l0"
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 7 and {"id", "prompt", "prediction", "references"} <= set(json.loads(lines[0]))
    assert list(run_dir.glob("wandb/offline-run-*")), "W&B logs offline without an account"
    tables = list(run_dir.glob("wandb/offline-run-*/files/media/table/test/predictions*.table.json"))
    assert tables, "the test predictions table is logged to W&B"
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["id", "media", "prompt", "prediction", "references"] and len(table["data"]) == 7
    assert not str(table["data"][0][1]).endswith(".png")  # logged as an image, not as a path
    images = list(run_dir.glob("wandb/offline-run-*/files/media/images/test/examples*.png"))
    assert len(images) == 7  # the first (up to 8) evaluated images, captioned with prediction and reference


def test_print_config_and_bad_preset(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(["fit", *_args(tmp_path), "--print_config"])
    printed = capsys.readouterr().out
    assert "depalm-qp-l0" in printed and "EasyVQADataModule" in printed
    with pytest.raises(ValueError, match="valid presets"):
        cli(["fit", *_args(tmp_path), "--model.init_args.preset", "nope"])


def test_configs_compose_in_order(capsys):
    configs = Path(__file__).parents[1] / "experiments" / "configs"
    with pytest.raises(SystemExit):
        cli(["fit", "--config", str(configs / "mechanisms" / "mapl.yaml"), "--config", str(configs / "data" / "easyvqa.yaml"),
             "--config", str(configs / "trainer" / "cpu.yaml"), "--model.init_args.encoder", "test-tiny-vit",
             "--model.init_args.llm", "test-tiny-llama", "--print_config"])
    printed = capsys.readouterr().out
    assert "preset: mapl" in printed and "EasyVQADataModule" in printed and "gradient_clip_val: 0.8" in printed
    assert "encoder: test-tiny-vit" in printed  # the later argument wins over the mechanism config


def test_presets_command_prints_every_preset(capsys):
    from perceptlm import presets
    from perceptlm.cli import main

    main(["presets"])
    table = capsys.readouterr().out
    for name in presets.names():
        assert f"| {name} |" in table
    assert "| depalm-qp-l0 | 12,768,384 | 32 |" in table  # tiny backbones, DePALM's 1024-wide mapper


def test_a_fit_with_init_from_starts_from_that_checkpoint(tmp_path):
    """The second stage of a two-stage run starts from the first stage's weights through the CLI (a
    fit without --ckpt_path keeps the command's init_from); learning rate 0 keeps them."""
    first = tmp_path / "first"
    cli(["fit", *_args(first)])
    checkpoint = first / "checkpoints" / "last.ckpt"
    second = tmp_path / "second"
    built = cli(["fit", *_args(second), "--model.init_args.init_from", str(checkpoint), "--model.init_args.lr", "0.0",
                 "--model.init_args.weight_decay", "0.0"])
    assert built.model.hparams.init_from == str(checkpoint)
    before = torch.load(checkpoint, weights_only=True)["state_dict"]
    after = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    fresh = cli(_args(tmp_path / "fresh"), run=False).model  # without init_from: other weights
    assert not all(torch.equal(fresh.state_dict()[k], before[k]) for k in before)


def test_a_checkpoint_path_keeps_the_commands_evaluation_options(tmp_path):
    """Lightning rebuilds the model from the checkpoint's hyper-parameters; eval_blind and decoding
    options still come from the command, and init_from is not re-read."""
    run_dir = tmp_path / "run"
    cli(["fit", *_args(run_dir), "--model.init_args.eval_blind", "false", "--model.init_args.max_new_tokens", "7"])
    checkpoint = str(run_dir / "checkpoints" / "last.ckpt")
    built = cli(["test", *_args(run_dir), "--model.init_args.connector", '{"width": 32, "num_queries": 2}',
                 "--model.init_args.eval_blind", "true", "--model.init_args.max_new_tokens", "3",
                 "--model.init_args.eval_mismatched", "true",
                 "--model.init_args.init_from", checkpoint, "--ckpt_path", checkpoint])
    model = built.model
    assert model.hparams.eval_blind is True and model.hparams.max_new_tokens == 3
    assert model.hparams.eval_mismatched is True
    results = json.loads((run_dir / "results.json").read_text())
    assert "blind_accuracy" in results and "mismatched_accuracy" in results
    assert model.hparams.init_from is None
    assert model.hparams.connector == {"width": 64, "num_queries": 4}  # the structure: the checkpoint's



HELP_PROBE = """
import sys
from perceptlm.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("IMPORTED", sorted(m for m in ("torch", "lightning", "transformers") if m in sys.modules))
"""


def _help(*args: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", HELP_PROBE, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_lists_every_command_without_the_heavy_stack():
    """`perceptlm --help` names every subcommand with one line; it and the tools' --help import
    neither torch, Lightning nor transformers."""
    from perceptlm.cli import TOOLS, TRAINER_COMMANDS, main

    output = _help("--help")
    listed = [line.split()[0] for line in output.splitlines() if line.startswith("  ")]
    assert listed == [*TRAINER_COMMANDS, *TOOLS] == ["fit", "validate", "test", "predict", "presets", "report", "dashboard"]
    assert output.rstrip().endswith("IMPORTED []")
    for tool in TOOLS:
        output = _help(tool, "--help")
        assert f"usage: perceptlm {tool}" in output and output.rstrip().endswith("IMPORTED []"), output
    with pytest.raises(SystemExit, match="unknown command 'nope'.*dashboard"):
        main(["nope"])
