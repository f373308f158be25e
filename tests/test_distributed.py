"""Multi-process runs with 2 CPU processes (DDP, gloo) through the real console entry: evaluation
scores every sample exactly once with the same predictions and metrics as a single process; a fit then
test trains on both ranks, checkpoints trainable weights only and logs to W&B from rank 0 only. Also
what DDP and FSDP rely on, checked in-process: the training sampler is sharded by Lightning with
``set_epoch`` reaching it, every trainable parameter of every preset receives a gradient (DDP's
``find_unused_parameters=False``), and the FSDP trainer config builds Lightning's FSDPStrategy."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from wandb_offline import read_run

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "experiments" / "easyvqa" / "depalm_qp_l0.yaml"


def _run(run_dir: Path, devices: int, extra: list[str]) -> dict:
    """``perceptlm test`` on the untrained tiny interface (no checkpoint)."""
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


# -- fit then test, 2 processes, through the console entry -----------------------------------------
TINY = ["--model.init_args.encoder", "test-tiny-vit", "--model.init_args.llm", "test-tiny-llama",
        "--model.init_args.connector", '{"width": 64, "num_queries": 4}']
BATCH, STEPS, RANKS = 4, 2, 2


def _cli(subcommand: str, run_dir: Path, extra: list[str]) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "perceptlm.cli", subcommand, "--config", str(CONFIG), *TINY,
        "--data.init_args.limit", "16", "--data.init_args.test_limit", "7",
        "--data.init_args.batch_size", str(BATCH), "--data.init_args.eval_batch_size", "2",
        "--trainer.max_steps", str(STEPS), "--trainer.log_every_n_steps", "1",
        "--trainer.devices", str(RANKS), "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.callbacks.init_args.dirpath", str(run_dir / "checkpoints"), *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_process_fit_then_test(tmp_path):
    from perceptlm import InterfaceModule

    run_dir = tmp_path / "ddp-fit"
    run_dir.mkdir()
    _cli("fit", run_dir, ["--trainer.logger.init_args.save_dir", str(run_dir)])
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # Each optimizer step all-reduces the gradients of both ranks, so rank 0 reaching STEPS means
    # both ranks trained; train_samples counts the samples of every rank.
    assert checkpoint["global_step"] == STEPS
    assert checkpoint["perceptlm"]["train_samples"] == RANKS * BATCH * STEPS
    module = InterfaceModule(preset="depalm-qp-l0", encoder="test-tiny-vit", llm="test-tiny-llama",
                             connector={"width": 64, "num_queries": 4})
    assert set(checkpoint["state_dict"]) == {f"model.{k}" for k in module.model.trainable_keys()}
    assert not any(k.startswith(("encoder.", "llm.")) for k in checkpoint["state_dict"])

    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"W&B must log from rank 0 only, found {runs}"
    run = read_run(next(runs[0].glob("*.wandb")))
    config = run["config"]
    assert config["preset"] == "depalm-qp-l0" and config["trainable_params"] == module.model.num_trainable_parameters
    losses = [h for h in run["history"] if "train/loss" in h]
    assert [h["trainer/global_step"] for h in losses] == list(range(STEPS))
    assert all(math.isfinite(h["train/loss"]) for h in losses)
    speeds = [h for h in losses if "train/samples_per_second" in h]  # from the second step on
    assert speeds and all(0 < h["train/samples_per_second"] < h["train/tokens_per_second"] for h in speeds)
    assert all(h["train/lr"] > 0 for h in speeds)
    assert config["cli"]["data"]["init_args"]["seed"] == 0  # the whole resolved CLI config
    assert str(config["cli"]["trainer"]["devices"]) == str(RANKS)
    table = json.loads(next(runs[0].glob("files/media/table/parameters_*.table.json")).read_text())
    assert table["columns"] == ["component", "trainable", "frozen"]
    assert {row[0]: row[1] for row in table["data"]} == {n: t for n, t, _ in module.model.parameter_table()}

    _cli("test", run_dir, ["--trainer.logger.init_args.save_dir", str(run_dir), "--ckpt_path", "last"])
    results = json.loads((run_dir / "results.json").read_text())
    ids = [json.loads(line)["id"] for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == results["num_eval_samples"] == 7
    assert results["train_samples"] == RANKS * BATCH * STEPS
    assert results["checkpoint"].endswith("last.ckpt")
    runs = set((run_dir / "wandb").glob("offline-run-*")) - set(runs)
    assert len(runs) == 1, f"the test must log one W&B run (rank 0), found {runs}"
    history = read_run(next(runs.pop().glob("*.wandb")))["history"]
    logged = {k: v for h in history for k, v in h.items()}
    assert logged["test/num_samples"] == 7 and logged["test/accuracy"] == pytest.approx(results["accuracy"])


# -- in-process: what DDP and FSDP rely on ---------------------------------------------------------
def test_lightning_shards_the_training_sampler_and_forwards_set_epoch():
    """Lightning replaces a custom sampler by ``DistributedSamplerWrapper`` under DDP (the function
    it calls is used here): ranks split each epoch's order, and ``set_epoch`` reaches our sampler."""
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from torch.utils.data import DataLoader

    from perceptlm.data.base import EpochShuffleSampler

    def epoch_order(seed: int, epoch: int) -> list[list[int]]:
        loader = DataLoader(list(range(10)), batch_size=2, sampler=EpochShuffleSampler(10, seed))
        shards = []
        for rank in range(RANKS):
            sampler = _get_distributed_sampler(loader, shuffle=True, overfit_batches=0, num_replicas=RANKS, rank=rank)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        assert loader.sampler.epoch == epoch  # forwarded to EpochShuffleSampler
        return shards

    shards = epoch_order(seed=0, epoch=1)
    assert len(shards[0]) == len(shards[1]) == 5 and sorted(shards[0] + shards[1]) == list(range(10))
    assert shards == epoch_order(seed=0, epoch=1)  # identical on every rank and every run
    assert shards != epoch_order(seed=0, epoch=2)  # a new order each epoch
    assert shards != epoch_order(seed=1, epoch=1)  # the data seed matters


def _tiny_overrides(preset) -> dict:
    """Paper-size Q-Formers shrunk for CPU; test-tiny-vit has 4 readable layers (eP-ALM reads 6)."""
    overrides = {}
    if preset.connector.get("type") == "qformer":
        overrides["connector"] = {"num_layers": 2, "num_heads": 4, "num_queries": 8,
                                  **({"width": 64} if preset.connector.get("width") else {})}
    if isinstance(preset.features.get("layers"), int) and preset.features["layers"] > 4:
        overrides["features"] = {"layers": 4}
    return overrides


def test_every_trainable_parameter_gets_a_gradient(tiny_encoder, tiny_llm):
    """DDP (``find_unused_parameters=False``, the default) fails on the second step when a parameter
    that requires a gradient received none: every preset must use all of its trainable weights
    (zero-initialised gates give zero gradients, which DDP accepts, not missing ones)."""
    from perceptlm import build, presets
    from perceptlm.data.collate import Collator, Sample

    samples = [Sample(str(i), torch.randn(3, 32, 32), p, [a])
               for i, (p, a) in enumerate([("shape?\n\nAnswer:\n", "circle"), ("color?\n\nAnswer:\n", "teal")])]
    for name in presets.names():
        # injections install hooks on the LLM they are given: each preset gets its own copy
        module = build(name, tiny_encoder, copy.deepcopy(tiny_llm), **_tiny_overrides(presets.get(name)))
        module.train()
        module.model.loss(Collator(module.tokenizer, "vqa", train=True)(samples)).backward()
        missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{name}: trainable parameters without a gradient: {missing[:5]}"


def test_fsdp_config_builds_the_strategy():
    """experiments/configs/trainer/fsdp.yaml parses with the real CLI and gives an FSDPStrategy that
    wraps LLM decoder layers and keeps original parameters (frozen and trainable in one unit)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy, Strategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    config = yaml.safe_load((ROOT / "experiments" / "configs" / "trainer" / "fsdp.yaml").read_text())["trainer"]
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": config["strategy"]})).strategy
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and LlamaDecoderLayer in policy._module_classes
    assert strategy.kwargs["use_orig_params"] is True
    assert config["gradient_clip_val"] == 0.8  # DePALM; clipped through FSDP's own clip_grad_norm_:

    from types import SimpleNamespace

    from perceptlm import InterfaceModule

    clipped = []
    strategy._lightning_module = None
    strategy.model = SimpleNamespace(clip_grad_norm_=clipped.append)  # the root FSDP unit's method
    module = InterfaceModule(preset="limber-1")
    module._trainer = SimpleNamespace(strategy=strategy)
    module.configure_gradient_clipping(None, 0.8, "norm")
    assert clipped == [0.8]  # not torch's clip_grad_norm_, which is wrong on sharded gradients
