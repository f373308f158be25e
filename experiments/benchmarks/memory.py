"""B6 — peak memory of a training step and size of the trainable-only checkpoint, per preset.

Memory (CPU): each preset runs in a fresh Python process (``--worker``), so nothing of another
preset stays in the allocator. The worker builds the module (cached CLIP ViT-L/14-shaped features,
SmolLM2-135M-Instruct, batch 8, 24 text tokens; the encoder is not materialised: the features come
from the cache), runs one warm-up step (AdamW's state is allocated there), then resets the kernel's
peak-resident counter (``echo 5 > /proc/self/clear_refs`` resets ``VmHWM``; a 1 ms RSS sampler
when that is not allowed) and runs a second step. Reported: the resident set before that step
(weights, optimizer state), its peak during the step and their difference (activations, gradients,
temporaries). glibc's allocator is told to return every allocation of 128 KiB or more to the kernel
when freed (``MALLOC_MMAP_THRESHOLD_``), so freed activations of the warm-up step do not hide in
the heap. ``tracemalloc`` does not see torch's allocations, hence RSS.

``--jobs 2`` measures two presets at once (separate processes: their RSS is their own).

Checkpoint: ``InterfaceModule.save_pretrained`` (safetensors, trainable weights only); bytes of
``model.safetensors``.

    python experiments/benchmarks/memory.py --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakRSS:
    """Peak resident set size over a ``with`` block: the kernel's ``VmHWM`` after resetting it,
    or a 1 ms sampler of ``VmRSS`` where ``/proc/self/clear_refs`` is not writable."""

    def __enter__(self) -> "PeakRSS":
        self.method = "VmHWM after clear_refs"
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.start = _status("VmRSS")  # the high-water mark restarts from here
        except OSError:
            self.method = "VmRSS sampled every 1 ms"
            self._stop = threading.Event()
            self.start = _status("VmRSS")
            self._samples = [self.start]
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._samples.append(_status("VmRSS"))
            time.sleep(0.001)

    def __exit__(self, *exc: Any) -> None:
        if self.method.startswith("VmHWM"):
            # The kernel updates its mark lazily (not on every page freed with madvise), so it can
            # read below the resident size seen at the start.
            self.peak = max(_status("VmHWM"), self.start)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._samples + [_status("VmRSS")])


def worker(args: Any) -> dict[str, Any]:
    """Measure one preset in this (fresh) process."""
    import gc

    import torch

    from perceptlm.model import PerceptualLM

    import workloads

    common.configure(args)
    at_start = _status("VmRSS")
    encoder, llm = workloads.feature_encoder(args.smoke), workloads.load_llm(args.smoke)
    module = PerceptualLM.build(args.worker, encoder, llm).train()
    batch = workloads.training_batch(module, args.batch_size, args.text_length, args.answer_length, args.seed)
    step = workloads.step_fn(module, batch, workloads.optimizer(module))
    step()  # warm-up: allocates AdamW's state
    gc.collect()
    with PeakRSS() as peak:
        step()
    before = peak.start
    with tempfile.TemporaryDirectory() as folder:
        path = module.save_pretrained(folder) / "model.safetensors"
        size = path.stat().st_size
    trainable = module.num_trainable_parameters
    return {"rss_after_imports": at_start, "rss_before_step": before, "peak_rss_step": peak.peak,
            "step_peak_over_resident": peak.peak - before, "peak_method": peak.method,
            "checkpoint_bytes": size, "trainable_parameters": trainable,
            "trainable_bytes_float32": 4 * trainable, "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__.split("\n\n")[0], repeats=1)
    parser.add_argument("--presets", default="all", help="comma-separated preset names, or 'all'")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-length", type=int, default=24)
    parser.add_argument("--answer-length", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=1, help="presets measured at the same time (one process each)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        Path(args.worker_output).write_text(json.dumps(worker(args)))
        return {}
    common.configure(args)

    from perceptlm import presets

    info = common.machine()
    names = presets.names() if args.presets == "all" else [n.strip() for n in args.presets.split(",")]
    def measure(name: str) -> dict[str, Any]:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker-output", out.name,
                       "--batch-size", str(args.batch_size), "--text-length", str(args.text_length),
                       "--answer-length", str(args.answer_length), "--seed", str(args.seed)]
            command += ["--smoke"] * args.smoke + (["--threads", str(args.threads)] if args.threads else [])
            start = time.perf_counter()
            subprocess.run(command, check=True, env={**os.environ, **MALLOC_ENV, "HF_HUB_OFFLINE": "1"})
            row = json.loads(Path(out.name).read_text())
        row["worker_seconds"] = round(time.perf_counter() - start, 2)
        mib = {k: round(v / 2**20, 1) for k, v in row.items() if k.endswith(("step", "resident", "_bytes"))}
        print(f"{name:<18} {mib}", file=sys.stderr, flush=True)
        return row

    # Workers are separate processes: running several at once changes their times, not their RSS.
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows: dict[str, Any] = dict(zip(names, pool.map(measure, names)))
    result = {
        "benchmark": "B6 memory and checkpoint size",
        "command": common.command(argv, "memory.py"),
        "machine": common.finish(info),
        "config": {"jobs": args.jobs, "encoder": "clip-vit-tiny-shape" if args.smoke else "clip-vit-l-14-shape (features, not materialised)",
                   "llm": "test-tiny-llama" if args.smoke else "smollm2-135m-instruct", "batch_size": args.batch_size,
                   "text_length": args.text_length, "answer_length": args.answer_length, "malloc": MALLOC_ENV},
        "method": ("fresh process per preset; RSS before the second training step, and its peak during that step "
                   "(VmHWM reset through /proc/self/clear_refs, else a 1 ms sampler); checkpoint = save_pretrained "
                   "model.safetensors"),
        "presets": rows,
    }
    common.write("memory" + ("_smoke" if args.smoke else ""), result, args.output)
    return result


if __name__ == "__main__":
    main()
