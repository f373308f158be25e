"""Two-stage training (Garg & Bas 2023 §2): ``align`` on caption pairs, then ``instruct`` on
instructions, the second initialised from the first's trainable weights.

``InterfaceModule(stage="align" | "instruct", init_from=PATH)`` applies the preset's recipe
(:meth:`perceptlm.presets.Preset.stage`: LLM tuning and its learning rate ``llm_lr``, frozen connector)
and copies the trainable weights of a checkpoint (``.ckpt``) or a ``save_pretrained`` folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


def read_trainable_state(path: str | Path) -> dict[str, Tensor]:
    """Trainable weights from a Lightning checkpoint file or a ``save_pretrained`` folder; never
    unpickles code (``weights_only=True`` / safetensors)."""
    path = Path(path)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"init_from={str(path)!r}: a folder without model.safetensors (save_pretrained writes it)")
        from safetensors.torch import load_file

        return load_file(str(weights))
    if not path.is_file():
        raise FileNotFoundError(f"init_from={str(path)!r}: no such checkpoint file or export folder")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def initialise_from(module: nn.Module, path: str | Path, keys: set[str]) -> list[str]:
    """Copy the weights of ``path`` that ``module`` holds under ``keys`` (its trainable keys); an
    earlier stage may lack some (a new LoRA, InstructBLIP's instruction projection). Returns the
    keys copied; errors when none match or a shape differs."""
    state = read_trainable_state(path)
    own = module.state_dict()
    shared = sorted(keys & set(state))
    if not shared:
        raise KeyError(f"init_from={str(path)!r} holds none of this module's trainable weights "
                       f"(e.g. {sorted(keys)[:3]}); was it trained with the same preset?")
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shared if state[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"init_from={str(path)!r}: shapes differ for {wrong[:3]}")
    module.load_state_dict({k: state[k] for k in shared}, strict=False)
    return shared
