"""Saving and loading an :class:`~perceptlm.modules.interface.InterfaceModule`: the trainable weights
only, as a ``save_pretrained`` export (safetensors + JSON, no pickle) and in Lightning checkpoints
(with every rank's RNG state and an exact-resume fix for epoch-end saves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from perceptlm.checkpointing import collect_rng_states, epoch_end_as_next_epoch_start, restore_rng_states

FROZEN_COMPONENTS = ("encoder", "llm")


class PersistenceMixin:
    """``save_pretrained`` / ``from_pretrained`` and the checkpoint hooks; the module provides
    ``trainable_keys``, ``hparams``, ``encoder_name``, ``llm_name``, ``preset`` and the train clock."""

    # -- export: safetensors + JSON, trainable weights only -------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` (trainable weights only) and ``perceptlm.json`` (preset,
        backbone zoo names, every constructor argument) to ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keep = self.trainable_keys()
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items() if k in keep}
        save_file(state, str(directory / "model.safetensors"))
        arguments = {k: v for k, v in dict(self.hparams).items() if k not in ("encoder", "llm")}
        config = {"format": "perceptlm", "version": 1, "class": type(self).__name__,
                  "encoder": self.encoder_name, "llm": self.llm_name, "arguments": arguments,
                  "train_seconds": self.train_seconds, "train_samples": self.train_samples}
        (directory / "perceptlm.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, encoder: Any = None, llm: Any = None, **overrides: Any,
    ) -> Any:
        """Rebuild a module saved by :meth:`save_pretrained`; backbones come from the zoo (or are
        passed in) and the trainable weights from safetensors (no pickle, no code execution)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        path = directory / "perceptlm.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a perceptlm export (save_pretrained writes it)")
        config = json.loads(path.read_text())
        if config.get("format") != "perceptlm":
            raise ValueError(f"{path}: not a perceptlm export (format={config.get('format')!r})")
        arguments = {**config["arguments"], **overrides}
        module = cls(encoder=encoder or config["encoder"], llm=llm or config["llm"], **arguments)
        state = load_file(str(directory / "model.safetensors"))
        missing = module.trainable_keys() - set(state)
        unexpected = set(state) - module.trainable_keys()
        if missing or unexpected:
            raise KeyError(f"{directory}: weights do not match the module: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
        module.load_state_dict(state, strict=False)
        module.train_seconds = float(config.get("train_seconds", 0.0))
        module.train_samples = int(config.get("train_samples", 0))
        return module.eval()

    # -- checkpoints: trainable weights only ---------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._stop_clock()
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["perceptlm"] = {
            "train_seconds": self.train_seconds,
            "train_samples": self.train_samples,
            "rng_states": collect_rng_states(self._trainer),  # every rank's: dropout continues exactly on resume
            "preset": self.preset.name,
            "encoder": self.encoder_name,
            "llm": self.llm_name,
        }
        epoch_end_as_next_epoch_start(checkpoint)  # resume starts the next epoch exactly (see there)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = self.trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks trainable weights {sorted(missing)[:5]} (and {max(0, len(missing) - 5)} more)")
        unexpected = [k for k in checkpoint["state_dict"] if k.split(".")[0] in FROZEN_COMPONENTS and k not in self.trainable_keys()]
        if unexpected:
            raise KeyError(f"checkpoint holds frozen-backbone weights {unexpected[:5]}: not a perceptlm checkpoint")
        state = checkpoint.get("perceptlm", {})
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.train_samples = int(state.get("train_samples", 0))
        if self._trainer is not None and self._trainer.state.fn == "fit":
            if "rng_states" in state:
                restore_rng_states(state["rng_states"], self._trainer.global_rank)
            elif "torch_rng_state" in state:  # checkpoints written before per-rank states
                torch.set_rng_state(state["torch_rng_state"])
