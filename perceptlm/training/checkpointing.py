"""Checkpoint files that survive interruption and resume exactly.

- :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the target's folder, fsyncs
  it and renames it over the target, so a process killed mid-write leaves the previous checkpoint
  intact; it loads with ``torch.load(weights_only=True)`` (tensors and plain Python data only).
- :func:`epoch_end_as_next_epoch_start` rewrites the loop state of a checkpoint saved at the end of
  an epoch so that resuming starts the next epoch from its first batch.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.partial`` beside the target, fsync, ``os.replace``, fsync the folder.

    A reader sees either the previous complete file or the new complete file, never a partial one
    (POSIX rename is atomic within a file system). Remote paths (``s3://`` ...) use Lightning's
    own writer. ``chunk_delay`` (seconds slept between 64 KiB chunks, default 0) exists for tests
    that kill a process in the middle of a write; leave it at 0 otherwise.
    """

    CHUNK = 1 << 16

    def __init__(self, chunk_delay: float = 0.0) -> None:
        if chunk_delay < 0:
            raise ValueError(f"chunk_delay={chunk_delay} must be >= 0 seconds")
        self.chunk_delay = chunk_delay

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        partial = target.with_name(f".{target.name}.partial")
        with open(partial, "wb") as handle:
            for start in range(0, len(data), self.CHUNK):
                handle.write(data[start : start + self.CHUNK])
                if self.chunk_delay:
                    handle.flush()
                    time.sleep(self.chunk_delay)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself reaches the disk
        finally:
            os.close(directory)

    def load_checkpoint(self, path: _PATH, map_location: Callable | Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Loads with ``weights_only=True`` unless the caller passes ``False`` explicitly."""
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=True if weights_only is None else weights_only)


def epoch_end_as_next_epoch_start(checkpoint: dict[str, Any]) -> None:
    """Rewrite, in place, the loop state of a checkpoint taken in ``on_train_epoch_end`` (a
    ``ModelCheckpoint`` saving at epoch end, a pre-emption there) to the state between that epoch
    and the next: the epoch counted as completed, the next epoch's batch counters at zero.

    Lightning 2.6 keeps such a checkpoint "restarting" when ``max_steps`` is set
    (``FitLoop.restarting`` in ``lightning/pytorch/loops/fit_loop.py``), and the epoch loop, whose
    batch counter is already at the end, then runs one extra batch from the next epoch's data
    before it closes the old epoch (``_TrainingEpochLoop.done``: ``_is_validation_done`` is False
    while restarting), so the resumed run departs from an uninterrupted one. Checkpoints taken at
    any other point are left as they are.
    """
    loops = checkpoint.get("loops", {}).get("fit_loop")
    if not loops or "epoch_progress" not in loops or "epoch_loop.batch_progress" not in loops:
        return
    epochs = loops["epoch_progress"]
    current = epochs["current"]
    at_epoch_end = (current["ready"] == current["started"] == current["processed"] == current["completed"] + 1)
    batches = loops["epoch_loop.batch_progress"]["current"]
    if not at_epoch_end or batches["completed"] != batches["processed"]:
        return
    for counters in (epochs["current"], epochs["total"]):
        counters["completed"] = counters["processed"]
    for key, state in loops.items():
        if key.startswith("epoch_loop.") and not key.startswith("epoch_loop.val_loop.") and isinstance(state, dict):
            _zero_current(state)
    loops["epoch_loop.batch_progress"]["is_last_batch"] = False


def _zero_current(state: dict[str, Any]) -> None:
    """Zero every ``current`` counter (the per-epoch ones) in a progress state, at any depth."""
    for key, value in state.items():
        if key == "current" and isinstance(value, dict):
            for name in value:
                value[name] = 0
        elif isinstance(value, dict):
            _zero_current(value)


def collect_rng_states(trainer: Any = None) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG states, ``[world size, n]`` per kind (``cpu``, and ``cuda`` for the
    current device when CUDA is in use), so that dropout masks continue exactly on resume on
    every rank. With a trainer of several processes this is a collective (all ranks call it, as
    they all do when a checkpoint is saved)."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if trainer is None or trainer.world_size == 1 or not distributed:
        return {kind: state[None] for kind, state in states.items()}
    device = trainer.strategy.root_device  # NCCL gathers CUDA tensors only
    gathered = {}
    for kind, state in states.items():
        parts = [torch.empty_like(state, device=device) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, state.to(device))
        gathered[kind] = torch.stack(parts).cpu()
    return gathered


def restore_rng_states(states: dict[str, torch.Tensor], rank: int = 0) -> None:
    """Set this process's RNG states from :func:`collect_rng_states` (a different number of ranks
    than at saving reuses the saved ones in turn)."""
    # clone(): set_rng_state reads a row view of the stacked states from the wrong offset (torch 2.x)
    if "cpu" in states:
        torch.set_rng_state(states["cpu"][rank % len(states["cpu"])].clone())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"][rank % len(states["cuda"])].clone())
