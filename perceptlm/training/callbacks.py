"""``PreemptionCheckpoint``: on SIGTERM during fit, save ``last.ckpt`` at the end of the current
training step and exit with :data:`EXIT_PREEMPTED`, so a scheduler (SLURM, Kubernetes) can restart the
run with ``--ckpt_path last``."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

EXIT_PREEMPTED = os.EX_TEMPFAIL if hasattr(os, "EX_TEMPFAIL") else 75  # "temporary failure, try again"


class PreemptionCheckpoint(Callback):
    """Turns SIGTERM into a checkpoint and a clean exit (exit code 75, ``EX_TEMPFAIL``).

    The handler only records the signal; the checkpoint is written at the next point where the
    state is complete and resumes exactly: the end of the current training step, or the end of the
    epoch if the signal comes during the epoch-end validation (a validation pass is finished first).
    The file is the first ``ModelCheckpoint``'s ``last.ckpt`` (what ``--ckpt_path last`` resumes
    from), else ``<default_root_dir>/checkpoints/last.ckpt``; it goes through the trainer's
    ``CheckpointIO`` (atomic with :class:`perceptlm.training.checkpointing.AtomicCheckpointIO`).

    Under DDP every rank agrees at each step on whether any rank was signalled; all ranks then save
    together (rank 0 writes) and all stop. It replaces Lightning's own SIGTERM handler from
    ``on_train_start`` until the end of fit (Lightning's stops the run without a checkpoint,
    ``lightning/pytorch/trainer/connectors/signal_connector.py``); Lightning restores the previous
    handlers at teardown.
    """

    def __init__(self, exit_code: int = EXIT_PREEMPTED) -> None:
        self.exit_code = exit_code
        self.requested = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            print(f"perceptlm: received signal {signum}: saving a checkpoint at the end of this training step",
                  file=sys.stderr, flush=True)
        self.requested = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.requested = trainer.received_sigterm  # a signal while the data was set up counts too
        if hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handler)  # after Lightning registered its own (Trainer._run)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._maybe_stop(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._maybe_stop(trainer)

    def _maybe_stop(self, trainer: Trainer) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):  # any rank signalled
            return
        path = self.checkpoint_path(trainer)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and Path(callback.dirpath or "") == path.parent:
                callback.last_model_path = str(path)  # part of the saved state: later saves overwrite this file
        trainer.save_checkpoint(path, weights_only=False)  # the full training state
        trainer.strategy.barrier("preemption_checkpoint")
        if trainer.is_global_zero:
            print(f"perceptlm: pre-empted at step {trainer.global_step} (epoch {trainer.current_epoch}): saved {path}; "
                  f"resume with --ckpt_path last (or {path})", file=sys.stderr, flush=True)
        raise SystemExit(self.exit_code)

    @staticmethod
    def checkpoint_path(trainer: Trainer) -> Path:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                step = {"epoch": torch.tensor(trainer.current_epoch), "step": torch.tensor(trainer.global_step)}
                return Path(callback.format_checkpoint_name(step, callback.CHECKPOINT_NAME_LAST))
        return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
