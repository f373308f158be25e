"""The connector probe of the instruction comparison (experiments/paper/instruction/connector_probe.py)."""

import importlib.util
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "experiments/paper/instruction/connector_probe.py"
spec = importlib.util.spec_from_file_location("connector_probe", PATH)
connector_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(connector_probe)
CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"


def test_image_share_is_zero_for_a_fixed_prompt_and_grows_with_what_varies():
    generator = torch.Generator().manual_seed(0)
    fixed = torch.randn(1, 4, 8, generator=generator).expand(50, -1, -1)
    assert connector_probe.image_share(fixed) == pytest.approx(0.0, abs=1e-6)
    varying = torch.randn(50, 4, 8, generator=generator)
    small = fixed + 0.1 * varying
    assert 0.0 < connector_probe.image_share(small) < 0.2 < connector_probe.image_share(fixed + varying)
    # by the definition: spread / RMS norm, per position, then the mean over positions
    spread = (small - small.mean(0)).norm(dim=-1).square().mean(0).sqrt()
    assert connector_probe.image_share(small) == pytest.approx((spread / small.norm(dim=-1).square().mean(0).sqrt()).mean().item())
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        connector_probe.image_share(fixed[:1])


def test_cross_validated_probe_reads_classes_and_not_shuffled_labels():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (200,), generator=generator)
    points = 3 * torch.randn(3, 10, generator=generator)[labels] + torch.randn(200, 10, generator=generator)
    assert connector_probe.cross_validated(points, labels, 3) > 0.95
    shuffled = labels[torch.randperm(200, generator=generator)]
    assert connector_probe.cross_validated(points, shuffled, 3) < 0.55
    with pytest.raises(ValueError, match="needs at least 5 samples, got 3"):
        connector_probe.cross_validated(points[:3], labels[:3], 3)


def test_measure_a_trained_run(tmp_path):
    from perceptlm.cli import cli

    run = tmp_path / "run"
    cli(["fit", "--config", str(CONFIGS / "mechanisms" / "blip2.yaml"), "--config", str(CONFIGS / "data" / "easy_instruct.yaml"),
         "--config", str(CONFIGS / "trainer" / "cpu.yaml"),
         "--model.init_args.encoder", "test-tiny-vit", "--model.init_args.llm", "test-tiny-llama",
         "--model.init_args.connector", '{"width": 32, "num_layers": 2, "num_heads": 4, "num_queries": 4}',
         "--data.init_args.family", "caption", "--data.init_args.limit", "8", "--data.init_args.batch_size", "4",
         "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(run),
         "--trainer.logger", "false", "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
         "--trainer.callbacks.dirpath", str(run / "checkpoints"), "--trainer.callbacks.save_last", "true",
         "--trainer.callbacks.save_top_k", "0"])
    model, datamodule = connector_probe.yesno_margin.load_run(run, family="caption", test_images=12)
    tokens, captions = connector_probe.perceptual_tokens(model, datamodule)
    assert tokens.shape == (len(captions), 4, model.llm.hidden_size) and len(captions) >= 5
    assert all(len(c.split()) == 3 for c in captions)  # "a {colour} {shape}"
    # the tokens are the ones the model feeds its LLM for these images
    batch = next(iter(datamodule.test_dataloader()))
    with torch.no_grad():
        first = model.perceive(batch.media, instruction=(batch.prompt_ids, batch.prompt_mask))
    assert torch.allclose(tokens[: len(first)], first, atol=1e-6)
    result = connector_probe.measure(run, 12)
    assert result["images"] == len(captions) and 0 < result["image share"] < 1
    assert 0 <= result["colour"] <= 100 and result["colour majority"] > 100 / 8 - 1e-9
    text = connector_probe.main([str(run), "--images", "12", "--out", str(tmp_path / "probe.md")])
    assert (tmp_path / "probe.md").read_text() == text and f"| {run} | {len(captions)} | {result['image share']:.3f} |" in text
