"""Every preset through the real CLI on tiny backbones: ``perceptlm fit`` for 2 steps, then
``perceptlm validate`` from the checkpoint it wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perceptlm import presets
from perceptlm.cli import cli

CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"
TINY_QFORMER = '{"width": 64, "num_layers": 2, "num_heads": 4, "num_queries": 4}'
OVERRIDES = {"blip2": TINY_QFORMER, "minigpt4": TINY_QFORMER, "mplug-owl": TINY_QFORMER, "instructblip": TINY_QFORMER,
             "flamingo": '{"num_layers": 2, "num_queries": 4}', "mapl": '{"width": 32, "num_queries": 4}',
             "depalm-qp-l0": '{"num_queries": 4}', "depalm-qp-inner": '{"num_queries": 4}'}


@pytest.mark.parametrize("name", presets.names())
def test_fit_two_steps_then_validate(name, tmp_path):
    args = [
        "--config", str(CONFIGS / "mechanisms" / f"{name}.yaml"),
        "--config", str(CONFIGS / "data" / "easyvqa.yaml"),
        "--config", str(CONFIGS / "trainer" / "cpu.yaml"),
        "--model.init_args.encoder", "test-tiny-vit", "--model.init_args.llm", "test-tiny-llama",
        "--model.init_args.max_new_tokens", "3", "--model.init_args.num_beams", "1",
        "--data.init_args.limit", "8", "--data.init_args.batch_size", "4",
        "--data.init_args.val_limit", "3", "--data.init_args.eval_batch_size", "3",
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path),
    ]
    if name in OVERRIDES:
        args += ["--model.init_args.connector", OVERRIDES[name]]
    if name == "epalm":  # test-tiny-vit has 4 readable layers; eP-ALM reads 6
        args += ["--model.init_args.features", '{"layers": 4}']
    cli(["fit", *args])
    checkpoints = list(tmp_path.glob("**/*.ckpt"))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0], weights_only=True)
    assert state["global_step"] == 2 and state["state_dict"]
    assert not any(k.startswith(("encoder.", "llm.")) and "lora_" not in k for k in state["state_dict"])
    run = cli(["validate", *args, "--trainer.limit_val_batches", "1.0", "--ckpt_path", str(checkpoints[0])])
    metrics = run.trainer.callback_metrics
    assert run.model.preset.name == name and metrics["val/num_samples"] == 3
    assert 0.0 <= float(metrics["val/accuracy"]) <= 1.0
