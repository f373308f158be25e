"""The trainable weights of an :class:`~perceptlm.training.InterfaceModule` in Lightning checkpoints
(with every rank's RNG state and an exact-resume fix for epoch-end saves) and as an earlier stage's
starting point (``init_from``). Its ``PerceptualLM`` sits under ``model.`` in the module's state dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from perceptlm.model import FROZEN_COMPONENTS, read_pretrained
from perceptlm.training.checkpointing import collect_rng_states, epoch_end_as_next_epoch_start, restore_rng_states
from perceptlm.training.loggers import RUN_KEY, run_identity

PREFIX = "model."


def model_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint's state dict with keys as the ``PerceptualLM`` names them (``connector.*``):
    the ``model.`` prefix removed; checkpoints written before the model had its own module
    (keys without the prefix) are read as they are."""
    if any(k.startswith(PREFIX) for k in state):
        return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    return dict(state)


def read_trainable_state(path: str | Path) -> dict[str, Tensor]:
    """Trainable weights (model key names) from a Lightning checkpoint file or a ``save_pretrained``
    folder; never unpickles code (``weights_only=True`` / safetensors)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"init_from={str(path)!r}: a folder without model.safetensors (save_pretrained writes it)")
        return read_pretrained(path)[1]
    if not path.is_file():
        raise FileNotFoundError(f"init_from={str(path)!r}: no such checkpoint file or export folder")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return model_keys(state.get("state_dict", state))


def save_checkpoint(module: Any, checkpoint: dict[str, Any]) -> None:
    """Keep the trainable weights only, what an exact resume needs, and the W&B run that wrote it."""
    module.clock.stop()
    keep = {PREFIX + k for k in module.model.trainable_keys()}
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
    checkpoint["perceptlm"] = {
        "train_seconds": module.clock.seconds,
        "train_samples": module.clock.samples,
        "rng_states": collect_rng_states(module._trainer),  # every rank's: dropout continues exactly on resume
        "preset": module.model.preset.name,
        "encoder": module.model.encoder.name,
        "llm": module.model.llm.name,
    }
    if (identity := run_identity(module.loggers)) is not None:  # a later test on this checkpoint continues it
        checkpoint["perceptlm"][RUN_KEY] = identity
    epoch_end_as_next_epoch_start(checkpoint)  # resume starts the next epoch exactly (see there)


def load_checkpoint(module: Any, checkpoint: dict[str, Any]) -> None:
    """Check that the checkpoint holds exactly this model's trainable weights, and restore the train
    clock and (when fitting) every rank's RNG state."""
    state = model_keys(checkpoint["state_dict"])
    checkpoint["state_dict"] = {PREFIX + k: v for k, v in state.items()}
    keys = module.model.trainable_keys()
    missing = keys - set(state)
    if missing:
        raise KeyError(f"checkpoint lacks trainable weights {sorted(missing)[:5]} (and {max(0, len(missing) - 5)} more)")
    frozen = [k for k in state if k.split(".")[0] in FROZEN_COMPONENTS and k not in keys]
    if frozen:
        raise KeyError(f"checkpoint holds frozen-backbone weights {frozen[:5]}: not a perceptlm checkpoint")
    extra = checkpoint.get("perceptlm", {})
    module.clock.seconds = float(extra.get("train_seconds", 0.0))
    module.clock.samples = int(extra.get("train_samples", 0))
    trainer = module._trainer
    if trainer is not None and trainer.state.fn == "fit":
        if "rng_states" in extra:
            restore_rng_states(extra["rng_states"], trainer.global_rank)
        elif "torch_rng_state" in extra:  # checkpoints written before per-rank states
            torch.set_rng_state(extra["torch_rng_state"])


def from_pretrained(cls: Any, directory: str | Path, encoder: Any = None, llm: Any = None, **overrides: Any) -> Any:
    """The ``cls`` module (an :class:`~perceptlm.training.InterfaceModule`) of a ``save_pretrained``
    folder: its constructor arguments and backbone names from the JSON (or ``encoder`` / ``llm``
    passed in), its trainable weights from safetensors, its train clock; in eval mode. ``init_from``
    is not repeated: the folder holds the weights it would copy."""
    config, state = read_pretrained(directory)
    arguments = {**config["arguments"], **overrides, "init_from": None}
    module = cls(encoder=encoder or config["encoder"], llm=llm or config["llm"], **arguments)
    module.model.load_trainable(state, str(directory))
    module.clock.seconds = float(config.get("train_seconds", 0.0))
    module.clock.samples = int(config.get("train_samples", 0))
    return module.eval()
