"""Weights & Biases logging that never blocks: online with credentials, offline without."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger


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
    otherwise (``WANDB_MODE`` wins when set). Offline runs sync later with ``wandb sync``."""

    def __init__(self, project: str = "perceptlm", save_dir: str = "runs", mode: str = "auto", **kwargs: Any) -> None:
        if mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(f"wandb mode {mode!r} is unknown; valid: auto, online, offline, disabled")
        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_available() else "offline")
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        super().__init__(project=project, save_dir=save_dir, offline=mode == "offline", mode=mode, **kwargs)

    def finalize(self, status: str) -> None:
        """Close the W&B run so the next fit/test in this process starts its own."""
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None
