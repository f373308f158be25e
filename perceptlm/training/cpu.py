"""CPU run settings checked before a run starts: bfloat16 only where the CPU computes it natively,
and no more intra-op threads than cores.

A CPU without bfloat16 instructions (x86 without AVX512-BF16 / AMX, for instance) runs ``bf16-mixed``
through conversions around float32 kernels: correct, but several times slower than float32. Such a
run is switched to ``32-true`` with one message instead of running slowly in silence.
"""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instruction sets with native bfloat16 arithmetic


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux: x86 ``flags``, ARM ``Features``); None
    where that file does not exist."""
    path = Path(cpuinfo)
    if not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU has bfloat16 arithmetic instructions: AVX512-BF16 or AMX-BF16 on x86, the
    BF16 extension on ARM (``bf16`` in Linux's features; Apple silicon reports it to oneDNN)."""
    flags = cpu_flags(cpuinfo)
    if flags is not None:
        return bool(flags & {*BF16_FLAGS, "bf16"})
    return platform.machine() in ("arm64", "aarch64") and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_precision(precision: str | int | None, cpuinfo: str | Path = "/proc/cpuinfo") -> str | int | None:
    """The precision a CPU run uses: ``precision`` itself, except bfloat16 on a CPU without native
    bfloat16, which becomes ``32-true`` (with a warning naming the reason)."""
    if precision is None or not str(precision).startswith("bf16") or has_native_bf16(cpuinfo):
        return precision
    warnings.warn(f"precision {precision!r}: this CPU has no native bfloat16 instructions ({' / '.join(BF16_FLAGS)}); "
                  "emulated bfloat16 is several times slower than float32, so this run uses precision '32-true'",
                  stacklevel=2)
    return "32-true"


def check_threads(requested: int | None = None) -> None:
    """Warn when more intra-op threads are asked for (``requested``, else ``OMP_NUM_THREADS``) than the
    process may use cores: threads then wait on each other and a step gets slower, not faster."""
    if requested is None:
        value = os.environ.get("OMP_NUM_THREADS", "")
        requested = int(value) if value.isdigit() else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if requested is not None and requested > cores:
        warnings.warn(f"{requested} threads requested but this process has {cores} cores; oversubscribed "
                      f"threads slow CPU kernels down (use at most {cores})", stacklevel=2)
