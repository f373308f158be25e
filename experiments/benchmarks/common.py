"""Shared by the benchmarks: machine description, interleaved timing (warm-up, repetitions,
medians), profiling of the top operators and JSON output under ``results/``.

Every benchmark compares arms measured in the same process and the same run; the arms alternate
(A B, B A, A B, ...) so that load from other processes on a shared machine hits them alike, and
the load average is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from perceptlm.training.cpu import check_threads, has_native_bf16

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on; ``load_average_start`` now, ``finish`` adds the end."""
    import lightning
    import transformers

    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": has_native_bf16(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "device": str(device),
        "load_average_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def finish(info: dict[str, Any]) -> dict[str, Any]:
    """Add the load average at the end of the run."""
    info["load_average_end"] = list(os.getloadavg())
    return info


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """Waits for queued device work (CUDA); nothing on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def interleaved(arms: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None, log: bool = True) -> dict[str, dict[str, Any]]:
    """Time each arm ``repeats`` times after ``warmup`` untimed calls; the order alternates
    (A B C, C B A, A B C, ...) so that slow drift of the machine's load affects every arm alike.
    Returns ``{arm: {"seconds": [...], "median": m, "min": ...}}``."""
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name]()
            sync()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            arms[name]()
            sync()
            seconds[name].append(time.perf_counter() - start)
            if log:
                print(f"  repeat {repeat} {name}: {seconds[name][-1]:.3f} s", file=sys.stderr, flush=True)
    return {name: {"seconds": [round(s, 5) for s in values], "median": round(median(values), 5),
                   "min": round(min(values), 5)} for name, values in seconds.items()}


def top_ops(fn: Callable[[], Any], count: int = 12, sync: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """Run ``fn`` once under ``torch.profiler`` and return the ``count`` operators with the largest
    self time (CPU, or CUDA when the device is a GPU): name, calls, self milliseconds, share."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        fn()
        sync()
    events = prof.key_averages()
    use_cuda = torch.cuda.is_available() and any(getattr(e, "self_device_time_total", 0) for e in events)
    key = "self_device_time_total" if use_cuda else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:count]
    return [{"op": e.key, "calls": e.count, "self_ms": round(getattr(e, key) / 1000, 3),
             "share": round(getattr(e, key) / total, 4)} for e in ranked]


def parser(description: str, repeats: int = 3) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny backbones, 1 repetition (a test, not a timing)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repetitions per arm")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per arm first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON path (default: results/<name>.json beside this file)")
    return parser


def configure(args: argparse.Namespace) -> None:
    """Apply the common options (threads, seed, offline hub)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        check_threads(args.threads)  # more threads than cores: a warning
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.smoke:
        args.repeats, args.warmup = 1, min(args.warmup, 1)


def command(argv: list[str] | None, script: str) -> str:
    """The command line that reproduces this run (from the repository root)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", f"experiments/benchmarks/{script}", *arguments])


def write(name: str, result: dict[str, Any], output: str | None = None) -> Path:
    """Write ``result`` as JSON to ``output`` or ``results/<name>.json``; returns the path."""
    path = Path(output) if output else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path
