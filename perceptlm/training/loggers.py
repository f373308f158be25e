"""Weights & Biases logging that never blocks (online with credentials, offline without), and one
W&B run per experiment: a checkpoint carries the identity of the run that wrote it, and a later
``validate`` / ``test`` / ``predict`` (or a resumed ``fit``) on that checkpoint continues that run."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import WandbLogger

# The run identity a checkpoint carries (``checkpoint["perceptlm"][RUN_KEY]``)
RUN_KEY = "wandb_run"
IDENTITY_FIELDS = ("id", "project", "entity", "name", "group", "tags")


def wandb_credentials_available() -> bool:
    """True when an API key is configured (environment or ~/.netrc), so online logging can work."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class AutoWandbLogger(WandbLogger):
    """``WandbLogger`` whose ``mode='auto'`` logs online when credentials exist and offline
    otherwise (``WANDB_MODE`` wins when set). Offline runs sync later with ``wandb sync``; the
    offline parts of one continued run (fit, then test) sync into that one run.

    ``new_run``: a command run on a checkpoint starts its own W&B run instead of continuing the
    checkpoint's (:meth:`continue_run`)."""

    def __init__(self, project: str = "perceptlm", save_dir: str = "runs", mode: str = "auto",
                 new_run: bool = False, **kwargs: Any) -> None:
        if mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(f"wandb mode {mode!r} is unknown; valid: auto, online, offline, disabled")
        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_available() else "offline")
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.new_run = new_run
        super().__init__(project=project, save_dir=save_dir, offline=mode == "offline", mode=mode, **kwargs)

    def continue_run(self, identity: dict[str, Any]) -> bool:
        """Log into the run ``identity`` (:func:`run_identity` of an earlier command) instead of a new
        one: its id, project, entity, name, group and tags; the job type stays this command's. False
        (and nothing changes) with ``new_run`` or once this logger's run has started."""
        if self.new_run or self._experiment is not None or not identity.get("id"):
            return False
        self._wandb_init.update({k: identity[k] for k in IDENTITY_FIELDS if identity.get(k)})
        self._wandb_init["resume"] = "allow"
        self._id, self._project = identity["id"], self._wandb_init.get("project")
        self._name = self._wandb_init.get("name")
        return True

    def finalize(self, status: str) -> None:
        """Close the W&B run so the next fit/test in this process starts its own."""
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


def run_identity(loggers: list[Any]) -> dict[str, Any] | None:
    """The identity of the first started W&B run among ``loggers`` (None when there is none, and on
    ranks other than 0, whose loggers hold no run)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            run = logger._experiment
            if isinstance(getattr(run, "id", None), str):
                return {"id": run.id, "project": run.project, "entity": run.entity or None, "name": run.name,
                        "group": run.group or None, "tags": list(run.tags or ())}
    return None


def checkpoint_file(trainer: Any, ckpt_path: str | os.PathLike | None) -> Path | None:
    """The file ``ckpt_path`` names: a path, or ``"last"`` (the newest ``last.ckpt`` of the trainer's
    checkpoint callbacks); None for anything else (no checkpoint, ``"best"`` before a fit)."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        candidates = [Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
                      for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        existing = [path for path in candidates if path.is_file()]
        return max(existing, key=lambda path: path.stat().st_mtime) if existing else None
    path = Path(ckpt_path)
    return path if path.is_file() else None


def checkpoint_run(path: str | os.PathLike) -> dict[str, Any] | None:
    """The W&B run identity stored in a checkpoint (None for checkpoints without one)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return checkpoint.get("perceptlm", {}).get(RUN_KEY)


def continue_checkpoint_run(trainer: Any, ckpt_path: str | os.PathLike | None) -> dict[str, Any] | None:
    """Point the trainer's :class:`AutoWandbLogger` (s) at the W&B run that wrote ``ckpt_path``,
    before any run starts, so one experiment (fit, resumed fit, test) is one W&B run. Returns the
    identity continued, None when there is none or every logger declines (``new_run``)."""
    path = checkpoint_file(trainer, ckpt_path)
    identity = checkpoint_run(path) if path is not None else None
    if not identity:
        return None
    loggers = [logger for logger in trainer.loggers if isinstance(logger, AutoWandbLogger)]
    if not any([logger.continue_run(identity) for logger in loggers]):
        return None
    if trainer.is_global_zero:
        print(f"W&B: continuing run {identity['id']} ({identity.get('name') or 'unnamed'}) of {path}; "
              "--trainer.logger.init_args.new_run true starts a new one")
    return identity
