"""The perceptual-encoder contract: frozen backbones that turn media into ``PerceptualFeatures``.

Feature extraction follows DePALM §3.1: any block's output can be read (the encoder's final norm
applied to every selected layer when it has one), the last ``k`` layers or explicit indices, and
CLS only, patches only, all tokens, or the mean of the valid tokens (one global token for encoders
without CLS, such as Whisper).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

TokenSelection = Literal["all", "cls", "patches", "mean"]
TOKEN_SELECTIONS: tuple[str, ...] = ("all", "cls", "patches", "mean")


@dataclass
class PerceptualFeatures:
    """Selected encoder outputs.

    ``tokens``: ``[B, L, N, D]`` for ``L`` selected layers (oldest first) and ``N`` tokens.
    ``mask``: ``[B, N]`` bool, True where a token carries signal (False for padded audio frames).
    ``cls_index``: index of the CLS/global token in ``N`` or None when it was not selected.
    ``grid``: ``(h, w)`` of the patch tokens when they form a 2-D grid (images), else None (1-D).
    """

    tokens: Tensor
    mask: Tensor
    cls_index: int | None = None
    grid: tuple[int, int] | None = None

    @property
    def num_layers(self) -> int:
        return self.tokens.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[2]

    def to(self, device: torch.device | str) -> "PerceptualFeatures":
        return PerceptualFeatures(self.tokens.to(device), self.mask.to(device), self.cls_index, self.grid)

def resolve_layers(layers: int | Sequence[int], num_layers: int, encoder: str) -> list[int]:
    """Turn ``layers`` (last ``k`` when an int, else explicit indices, negative allowed) into sorted
    absolute indices, with an error that lists the valid range."""
    if isinstance(layers, int):
        if not 1 <= layers <= num_layers:
            raise ValueError(
                f"{encoder}: cannot select the last {layers} layers; this encoder has {num_layers} "
                f"readable layers (valid: 1..{num_layers})"
            )
        return list(range(num_layers - layers, num_layers))
    resolved = []
    for index in layers:
        absolute = index + num_layers if index < 0 else index
        if not 0 <= absolute < num_layers:
            raise ValueError(
                f"{encoder}: layer index {index} is out of range; valid indices are "
                f"0..{num_layers - 1} or -{num_layers}..-1"
            )
        resolved.append(absolute)
    if not resolved:
        raise ValueError(f"{encoder}: select at least one layer")
    return sorted(set(resolved))


_SELECTION_ATTRIBUTES = frozenset({"name", "training", "trainable", "layer_spec", "layer_indices",
                                   "token_selection", "apply_final_norm"})


def _plain(value: Any) -> bool:
    """A JSON scalar or a list/tuple of them (a configuration value, not state)."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


class PerceptualEncoder(nn.Module):
    """A frozen perceptual backbone with layer and token selection.

    Subclasses set ``modality``, ``embed_dim``, ``num_layers`` (readable layers), ``has_cls`` and
    ``grid`` and implement :meth:`hidden_states` and :meth:`preprocess`. The base class applies the
    selection, the optional final norm and freezing.
    """

    modality: str = "image"
    name: str = "encoder"
    # True when :meth:`preprocess` draws random augmentations (crops, frame offsets): such media
    # have no single encoding per file, so the feature cache refuses the encoder.
    random_augmentation: bool = False

    def __init__(
        self,
        layers: int | Sequence[int] = 1,
        tokens: TokenSelection = "all",
        final_norm: bool = True,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        if tokens not in TOKEN_SELECTIONS:
            raise ValueError(f"tokens={tokens!r} is not a token selection; valid: {TOKEN_SELECTIONS}")
        self.layer_spec = layers
        self.token_selection = tokens
        self.apply_final_norm = final_norm
        self.trainable = trainable

    # -- to implement --------------------------------------------------------------------
    embed_dim: int
    num_layers: int
    has_cls: bool = True
    grid: tuple[int, int] | None = None
    num_raw_tokens: int

    def hidden_states(self, media: Tensor, layers: list[int]) -> tuple[list[Tensor], Tensor | None]:
        """Outputs ``[B, N, D]`` of the given absolute layers (CLS first when ``has_cls``) and an
        optional ``[B, N]`` validity mask."""
        raise NotImplementedError

    def final_norm(self, hidden: Tensor) -> Tensor:
        """The encoder's own final normalisation (identity when it has none)."""
        return hidden

    def preprocess(self, item: Any) -> Tensor:
        """One raw media item (PIL image, waveform, frames) -> the tensor :meth:`forward` batches."""
        raise NotImplementedError

    @staticmethod
    def stack_media(items: list[Any]) -> Any:
        """Batch :meth:`preprocess` outputs (a tensor stack by default)."""
        return torch.stack(items)

    def preprocess_config(self) -> dict[str, Any]:
        """What besides the weights and the selection shapes the features: the class and every
        public plain-valued attribute (image size, mean/std, resampling, frame count, ...).
        Override when preprocessing depends on anything else."""
        config: dict[str, Any] = {"class": f"{type(self).__module__}.{type(self).__qualname__}"}
        for key, value in sorted(vars(self).items()):
            if not key.startswith("_") and key not in _SELECTION_ATTRIBUTES and _plain(value):
                config[key] = value
        return config

    def cache_key(self) -> dict[str, Any]:
        """The feature cache's key for this encoder: name, selection (DePALM §3.1), preprocessing and
        parameter dtype (the cache adds a digest of the weights)."""
        dtype = next((p.dtype for p in self.parameters()), torch.float32)
        return {"name": self.name, "layers": list(self.layer_indices), "tokens": self.token_selection,
                "final_norm": self.apply_final_norm, "preprocess": self.preprocess_config(), "dtype": str(dtype)}

    # -- shared ----------------------------------------------------------------------------
    def setup_selection(self) -> None:
        """Validate the selection once the subclass knows its depth; call at the end of __init__."""
        self.layer_indices = resolve_layers(self.layer_spec, self.num_layers, self.name)
        if self.token_selection == "cls" and not self.has_cls:
            raise ValueError(f"{self.name} has no CLS token; valid token selections: 'all', 'patches'")
        if not self.trainable:
            self.freeze()

    def with_selection(self, layers: int | Sequence[int] | None = None, tokens: TokenSelection | None = None,
                       final_norm: bool | None = None) -> "PerceptualEncoder":
        """A view of this encoder with another selection; the weights are shared, not copied."""
        view = copy.copy(self)
        view.layer_spec = self.layer_spec if layers is None else layers
        view.token_selection = self.token_selection if tokens is None else tokens
        view.apply_final_norm = self.apply_final_norm if final_norm is None else final_norm
        view.setup_selection()
        return view

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PerceptualEncoder":
        # Frozen encoders stay in eval mode even inside ``trainer.fit`` (no dropout, fixed BN stats).
        return super().train(mode and self.trainable)

    @property
    def num_tokens(self) -> int:
        """Tokens per selected layer after token selection."""
        if self.token_selection in ("cls", "mean"):
            return 1
        if self.token_selection == "patches" and self.has_cls:
            return self.num_raw_tokens - 1
        return self.num_raw_tokens

    @property
    def num_selected_layers(self) -> int:
        return len(self.layer_indices)

    def forward(self, media: Tensor) -> PerceptualFeatures:
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            states, mask = self.hidden_states(media, self.layer_indices)
            if self.apply_final_norm:
                states = [self.final_norm(s) for s in states]
            tokens = torch.stack(states, dim=1)  # [B, L, N, D]
        if mask is None:
            mask = torch.ones(tokens.shape[0], tokens.shape[2], dtype=torch.bool, device=tokens.device)
        return self._select_tokens(tokens, mask)

    def blank(self, batch: int, like: Tensor) -> PerceptualFeatures:
        """Zero features with the shape and selection :meth:`forward` gives (dtype and device of
        ``like``): the input of the "blind" baseline. The encoder does not run."""
        tokens = like.new_zeros(batch, self.num_selected_layers, self.num_raw_tokens, self.embed_dim)
        return self._select_tokens(tokens, torch.ones(batch, self.num_raw_tokens, dtype=torch.bool, device=like.device))

    def _select_tokens(self, tokens: Tensor, mask: Tensor) -> PerceptualFeatures:
        """Apply the token selection to ``[B, L, N, D]`` tokens and their ``[B, N]`` mask."""
        cls_index: int | None = 0 if self.has_cls else None
        grid = self.grid
        if self.token_selection == "cls":
            tokens, mask, grid = tokens[:, :, :1], mask[:, :1], None
        elif self.token_selection == "patches" and self.has_cls:
            tokens, mask, cls_index = tokens[:, :, 1:], mask[:, 1:], None
        elif self.token_selection == "mean":  # every valid token (CLS included) averaged: one global token
            weights = mask[:, None, :, None].to(tokens.dtype)
            tokens = (tokens * weights).sum(2, keepdim=True) / weights.sum(2, keepdim=True).clamp_min(1)
            mask, grid, cls_index = mask.any(1, keepdim=True), None, None
        return PerceptualFeatures(tokens=tokens, mask=mask, cls_index=cls_index, grid=grid)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, layers={self.layer_indices}, tokens={self.token_selection!r}, "
            f"final_norm={self.apply_final_norm}"
        )
