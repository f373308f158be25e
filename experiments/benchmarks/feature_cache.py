"""Epoch time training from the feature cache vs encoding live (frozen encoder, DePALM §3.1).

Both arms train copies of one module from the same initial weights, data order and dropout seed:
"live" reads and preprocesses every media file and runs the frozen encoder; "cache" reads the
encoder's outputs from the memory-mapped cache (built once before timing; its time is reported
apart). An arm's epoch time is the sum over its steps of data loading + encoder (live only) + loss,
backward and optimizer step. The arms alternate step by step (which goes first alternates too), so
load from other processes on a shared machine hits both alike; the JSON holds every epoch, the
medians and their ratio, and the loss difference between the arms at the first step (same weights)
and over the epoch (rounding differences of the features grow through training).

    python experiments/benchmarks/feature_cache.py --threads 1 --output experiments/benchmarks/feature_cache_easyvqa.json
    python experiments/benchmarks/feature_cache.py --threads 1 --encoder video:efficientnet-lite0 \\
        --features '{"num_frames": 8, "temporal": "concat"}' --data perceptlm.data.SynthVideoDataModule \\
        --data-args '{"train_frame_sampling": "uniform"}' --limit 160 --output experiments/benchmarks/feature_cache_video.json
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _datamodule(args: argparse.Namespace, module: Any, cache: str | None) -> Any:
    dm = _class(args.data)(limit=args.limit, batch_size=args.batch_size, seed=0, feature_cache=cache,
                           **json.loads(args.data_args))
    dm.prepare_data()
    dm.connect(module)
    dm.setup("fit")
    return dm


def _epochs(modules: dict[str, Any], loaders: dict[str, Any], initial: dict[str, torch.Tensor],
            device: torch.device, steps: int | None = None) -> dict[str, dict[str, Any]]:
    """One epoch of each arm, interleaved step by step (the order alternates every step), each arm
    from the initial trainable weights with its own optimizer and the same dropout masks, so both
    run under the same load from other processes. Per arm: seconds (data + step), data seconds,
    step seconds (encoder, when live, + loss, backward, optimizer) and the losses."""
    from lightning_fabric.utilities.apply_func import move_data_to_device

    state: dict[str, dict[str, Any]] = {}
    for arm, module in modules.items():
        module.load_state_dict(initial, strict=False)
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=2e-3, eps=1e-4)
        torch.manual_seed(0)  # the same dropout masks in every arm
        state[arm] = {"iterator": iter(loaders[arm]), "optimizer": optimizer, "rng": torch.get_rng_state(),
                      "data_seconds": 0.0, "step_seconds": 0.0, "losses": [], "done": False}
    step = 0
    while not all(s["done"] for s in state.values()) and (steps is None or step < steps):
        for arm in (list(modules) if step % 2 == 0 else list(modules)[::-1]):
            run = state[arm]
            if run["done"]:
                continue
            torch.set_rng_state(run["rng"])
            tick = time.perf_counter()
            batch = next(run["iterator"], None)
            tock = time.perf_counter()
            run["data_seconds"] += tock - tick
            if batch is None:
                run["done"] = True
                continue
            loss = modules[arm].loss(move_data_to_device(batch, device))
            loss.backward()
            run["optimizer"].step()
            run["optimizer"].zero_grad(set_to_none=True)
            run["losses"].append(loss.item())  # .item() waits for the device
            run["step_seconds"] += time.perf_counter() - tock
            run["rng"] = torch.get_rng_state()
        step += 1
    return {arm: {"seconds": r["data_seconds"] + r["step_seconds"], "data_seconds": r["data_seconds"],
                  "step_seconds": r["step_seconds"], "losses": r["losses"]} for arm, r in state.items()}


def _machine(device: torch.device) -> dict[str, Any]:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--llm", default="smollm2-135m-instruct")
    parser.add_argument("--preset", default="depalm-qp-l0")
    parser.add_argument("--features", default="{}", help="JSON: the preset's feature selection overrides")
    parser.add_argument("--connector", default='{"width": 256, "num_queries": 8}',
                        help="JSON: connector overrides (default: the easy-VQA demo config)")
    parser.add_argument("--data", default="perceptlm.data.EasyVQADataModule", help="datamodule class path")
    parser.add_argument("--data-args", default="{}", help="JSON: more datamodule arguments")
    parser.add_argument("--limit", type=int, default=320, help="training samples (a fixed subset)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per arm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 avoids OpenMP spinning on a busy machine)")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: a temporary folder, removed)")
    parser.add_argument("--output", default=None, help="JSON file to write")
    args = parser.parse_args(argv)

    from perceptlm import zoo
    from perceptlm.model import PerceptualLM

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_average = os.getloadavg()
    encoder, llm = zoo.load_encoder(args.encoder), zoo.load_llm(args.llm)
    torch.manual_seed(0)  # the connector's initial weights
    module = PerceptualLM.build(args.preset, encoder, llm, features=json.loads(args.features) or None,
                                connector=json.loads(args.connector)).to(device).train()
    keep = module.trainable_keys()
    initial = {k: v.detach().clone() for k, v in module.state_dict().items() if k in keep}
    root = args.cache_dir or tempfile.mkdtemp(prefix="feature-cache-")
    try:
        live, cached = _datamodule(args, module, None), _datamodule(args, module, root)
        tick = time.perf_counter()
        loaders = {"live": live.train_dataloader(), "cache": cached.train_dataloader()}  # builds the cache
        build_seconds = time.perf_counter() - tick
        dataset = cached._cached["train"]
        shards = dataset.features.shards
        size = sum(f.stat().st_size for s in shards for f in s.iterdir())
        unique = len({s.media for s in dataset.samples})
        modules = {"live": module, "cache": copy.deepcopy(module)}  # the cache arm's encoder never runs
        _epochs(modules, loaders, initial, device, steps=2)  # warm-up: first-call allocations, file cache
        epochs: dict[str, list[dict[str, Any]]] = {"live": [], "cache": []}
        for repeat in range(args.repeats):
            order = ("live", "cache") if repeat % 2 == 0 else ("cache", "live")
            for arm, run in _epochs({a: modules[a] for a in order}, loaders, initial, device).items():
                epochs[arm].append(run)
            print(f"repeat {repeat}: live {epochs['live'][-1]['seconds']:.2f} s, "
                  f"cache {epochs['cache'][-1]['seconds']:.2f} s", flush=True)
    finally:
        if args.cache_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    median = {arm: statistics.median(e["seconds"] for e in runs) for arm, runs in epochs.items()}
    loss_gap = max(abs(a - b) for x, y in zip(epochs["live"], epochs["cache"]) for a, b in zip(x["losses"], y["losses"]))
    result = {
        "command": " ".join(["python", *sys.argv]) if argv is None else argv,
        "machine": {**_machine(device), "load_average_before": load_average, "load_average_after": os.getloadavg()},
        "config": {"encoder": args.encoder, "llm": args.llm, "preset": args.preset, "features": json.loads(args.features),
                   "connector": json.loads(args.connector), "data": args.data, "data_args": json.loads(args.data_args),
                   "samples": len(dataset), "unique_media_files": unique, "batch_size": args.batch_size,
                   "steps_per_epoch": len(epochs["live"][0]["losses"]), "repeats": args.repeats},
        "cache_build": {"seconds": round(build_seconds, 3), "media_files": unique, "bytes": size},
        "epochs": {arm: [{k: (round(v, 4) if k != "losses" else v) for k, v in e.items()} for e in runs]
                   for arm, runs in epochs.items()},
        "median_epoch_seconds": {arm: round(v, 4) for arm, v in median.items()},
        "median_data_seconds": {arm: round(statistics.median(e["data_seconds"] for e in runs), 4)
                                for arm, runs in epochs.items()},
        "ratio_cache_over_live": round(median["cache"] / median["live"], 4),
        "median_per_epoch_ratio": round(statistics.median(c["seconds"] / l["seconds"]
                                                          for l, c in zip(epochs["live"], epochs["cache"])), 4),
        "speedup_live_over_cache": round(median["live"] / median["cache"], 3),
        # Same weights, same batch: features equal to float rounding (kernels depend on batch size).
        "first_step_loss_difference": abs(epochs["live"][0]["losses"][0] - epochs["cache"][0]["losses"][0]),
        # Over the epoch's training trajectory, where rounding differences grow step after step.
        "max_abs_loss_difference": loss_gap,
    }
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    keys = ("median_epoch_seconds", "ratio_cache_over_live", "speedup_live_over_cache", "first_step_loss_difference",
            "max_abs_loss_difference", "cache_build")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    return result


if __name__ == "__main__":
    main()
