"""Every preset through the real CLI on tiny backbones: ``perceptlm fit`` for 2 steps, then
``perceptlm validate`` from the checkpoint it wrote; and a preset file from a folder of one's own, named
by ``PERCEPTLM_PRESETS``, through the same commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_preset_files import NEW_PRESET
from test_presets import tiny_overrides

from perceptlm import presets
from perceptlm.cli import cli

CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"


def fit_then_validate(name, tmp_path, mechanism_config, *extra):
    """``perceptlm fit`` for 2 steps on tiny backbones, then ``perceptlm validate`` from its checkpoint."""
    args = [
        "--config", str(mechanism_config),
        "--config", str(CONFIGS / "data" / "easyvqa.yaml"),
        "--config", str(CONFIGS / "trainer" / "cpu.yaml"),
        "--model.init_args.encoder", "test-tiny-vit", "--model.init_args.llm", "test-tiny-llama",
        "--model.init_args.max_new_tokens", "3", "--model.init_args.num_beams", "1",
        "--data.init_args.limit", "8", "--data.init_args.batch_size", "4",
        "--data.init_args.val_limit", "3", "--data.init_args.eval_batch_size", "3",
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path), *extra,
    ]
    for field, value in tiny_overrides(presets.get(name)).items():  # paper-size Q-Formers, eP-ALM's 6 layers
        args += [f"--model.init_args.{field}", json.dumps(value)]
    cli(["fit", *args])
    checkpoints = list(tmp_path.glob("**/*.ckpt"))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0], weights_only=True)
    assert state["global_step"] == 2 and state["state_dict"]
    assert not any(k.startswith(("encoder.", "llm.")) and "lora_" not in k for k in state["state_dict"])
    run = cli(["validate", *args, "--trainer.limit_val_batches", "1.0", "--ckpt_path", str(checkpoints[0])])
    metrics = run.trainer.callback_metrics
    assert run.model.model.preset.name == name and metrics["val/num_samples"] == 3
    assert 0.0 <= float(metrics["val/accuracy"]) <= 1.0


@pytest.mark.parametrize("name", presets.names())
def test_fit_two_steps_then_validate(name, tmp_path):
    fit_then_validate(name, tmp_path, CONFIGS / "mechanisms" / f"{name}.yaml")


def test_a_preset_file_of_ones_own_through_the_cli(tmp_path, monkeypatch):
    """A new combination (4 QPMapper summary tokens injected inner) is one file in a folder of one's
    own; the run config of a shipped preset serves, with ``--model.init_args.preset`` naming it."""
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "qp4-inner.yaml").write_text(NEW_PRESET)
    monkeypatch.setenv("PERCEPTLM_PRESETS", str(folder))
    assert "qp4-inner" in presets.names()
    fit_then_validate("qp4-inner", tmp_path / "run", CONFIGS / "mechanisms" / "depalm-qp-l0.yaml",
                      "--model.init_args.preset", "qp4-inner")
