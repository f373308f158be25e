"""Token resampler (DePALM §3.2, "R-avgpool / R-linear / R-QPMapper / R-rand"), as DePALM's released
``TokensResampler`` runs it: an optional input Linear to the working width (every token, CLS
included), the CLS token kept, the patch tokens reduced 4x, RMSNorm (eps 1e-4) over [CLS; reduced],
an optional global QPMapper, then a Linear to the LLM width.

Grouping: 2x2 spatial windows when the features have a 2-D ``grid`` (images), else 4 consecutive
tokens (1-D sequences such as audio frames). A grid side or a sequence length that is not a multiple
of the window is *padded* (ceil), never cropped: the last window row/column (or group) holds fewer
real tokens and the reductions only use those (masked mean, zeros in the concatenations, key padding
for the QPMapper). E.g. 7x7 -> 4x4 windows, 16x16 -> 8x8 (CLIP-L/14: 257 tokens -> 1 + 64 = 65).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from perceptlm.connectors.base import Connector
from perceptlm.connectors.qpmapper import QPMapper
from perceptlm.encoders.base import PerceptualFeatures

ResamplerMode = Literal["avgpool", "linear", "qpmapper", "rand"]
MODES: tuple[str, ...] = ("avgpool", "linear", "qpmapper", "rand")
AVERAGES: tuple[str, ...] = ("channels", "tokens")


def group_tokens(tokens: Tensor, mask: Tensor, grid: tuple[int, int] | None, reduction: int = 4) -> tuple[Tensor, Tensor]:
    """Patch tokens ``[B, P, D]`` (row-major over ``grid`` when given) and mask ``[B, P]`` ->
    groups ``[B, G, reduction, D]`` and their mask ``[B, G, reduction]`` (False on padding).

    2-D: ``sqrt(reduction) x sqrt(reduction)`` windows in row-major window order, each window's
    tokens row-major; 1-D: ``reduction`` consecutive tokens. Partial windows are zero-padded."""
    batch, count, dim = tokens.shape
    if grid is None:
        groups = math.ceil(count / reduction)
        pad = groups * reduction - count
        tokens = torch.cat([tokens, tokens.new_zeros(batch, pad, dim)], dim=1)
        mask = torch.cat([mask, mask.new_zeros(batch, pad)], dim=1)
        return tokens.reshape(batch, groups, reduction, dim), mask.reshape(batch, groups, reduction)
    side = math.isqrt(reduction)
    if side * side != reduction:
        raise ValueError(f"reduction={reduction} must be a square number (2-D windows); e.g. 4 for 2x2")
    height, width = grid
    if height * width != count:
        raise ValueError(f"grid {grid} holds {height * width} patch tokens but the features have {count}")
    rows, cols = math.ceil(height / side), math.ceil(width / side)
    image = tokens.new_zeros(batch, rows * side, cols * side, dim)
    image[:, :height, :width] = tokens.reshape(batch, height, width, dim)
    valid = mask.new_zeros(batch, rows * side, cols * side)
    valid[:, :height, :width] = mask.reshape(batch, height, width)
    image = image.reshape(batch, rows, side, cols, side, dim).transpose(2, 3)
    valid = valid.reshape(batch, rows, side, cols, side).transpose(2, 3)
    return image.reshape(batch, rows * cols, reduction, dim), valid.reshape(batch, rows * cols, reduction)


def num_groups(count: int, grid: tuple[int, int] | None, reduction: int = 4) -> int:
    """Groups :func:`group_tokens` makes from ``count`` patch tokens."""
    if grid is None:
        return math.ceil(count / reduction)
    side = math.isqrt(reduction)
    if grid[0] * grid[1] != count:
        raise ValueError(f"grid {grid} holds {grid[0] * grid[1]} patch tokens, not {count}")
    return math.ceil(grid[0] / side) * math.ceil(grid[1] / side)


def sample_keep_fraction(mean: float = 0.25, std: float = 0.2, low: float = 1 / 16, high: float = 0.5,
                         full_probability: float = 0.1) -> float:
    """R-rand's training keep fraction: ~N(mean, std) clipped to [low, high], and ``high`` with
    probability ``full_probability`` (DePALM §3.2). Uses torch's global RNG (seedable)."""
    if float(torch.rand(())) < full_probability:
        return high
    return min(high, max(low, mean + std * float(torch.randn(()))))


class TokenResampler(Connector):
    """DePALM §3.2 R-* token resampler. Patch groups are reduced by ``mode``:

    - ``avgpool``: ``average="channels"`` (DePALM's released operator, which produced the paper's
      R-avgpool row): ``AvgPool1d(4)`` over the channels of each token of a window, the window's 4
      pooled tokens (``width/4`` channels each) concatenated into one; ``average="tokens"``: the
      mean of the window's tokens, as the paper's text describes;
    - ``linear``: concatenation -> Linear(4W -> W);
    - ``qpmapper``: a :class:`QPMapper` (one learned query, ``num_layers`` layers, FFN ``activation``;
      DePALM's resampler runs it with a linear FFN) on each group separately;
    - ``rand``: no grouping; in training a random subset of the patch tokens is kept (one subset per
      batch, order preserved; fraction from :func:`sample_keep_fraction`); at evaluation ALL tokens.

    ``width``: the working width W, reached by an input Linear applied to every token first (DePALM's
    ``adapter.embed_dim``: ``"llm"`` for the LLM width as its R-linear / R-avgpool scripts set, an
    integer such as 768 for R-QPMapper, None for the feature width without a Linear as R-rand).
    ``global_layers`` > 0 adds a QPMapper with one query over all the resampled tokens (DePALM's
    low-data R-QPMapper scripts: one token reaches the LLM). Then a Linear to the LLM width.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        mode: ResamplerMode = "avgpool",
        width: int | Literal["llm"] | None = None,
        average: Literal["channels", "tokens"] = "channels",
        reduction: int = 4,
        num_layers: int = 4,
        num_heads: int = 8,
        dropout: float = 0.1,
        activation: str | None = "gelu",
        global_layers: int = 0,
        norm_eps: float = 1e-4,
        keep_mean: float = 0.25,
        keep_std: float = 0.2,
        keep_min: float = 1 / 16,
        keep_max: float = 0.5,
        full_probability: float = 0.1,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"resampler mode={mode!r} is unknown; valid: {MODES}")
        if average not in AVERAGES:
            raise ValueError(f"resampler average={average!r} is unknown; valid: {AVERAGES}")
        if isinstance(width, str) and width != "llm":
            raise ValueError(f"resampler width={width!r} is unknown; valid: an integer, 'llm' (the LLM width), None")
        working = out_dim if width == "llm" else (width or in_dim)
        if mode == "avgpool" and average == "channels" and working % reduction:
            raise ValueError(f"channel average pooling needs a width divisible by reduction={reduction}; got {working}")
        self.in_dim, self.out_dim, self.width, self.mode, self.reduction = in_dim, out_dim, working, mode, reduction
        self.average = average
        self.keep = dict(mean=keep_mean, std=keep_std, low=keep_min, high=keep_max, full_probability=full_probability)
        self.input: nn.Module = nn.Linear(in_dim, working) if width is not None else nn.Identity()
        self.pool: nn.Module | None = None
        if mode == "linear":
            self.pool = nn.Linear(reduction * working, working)
        elif mode == "qpmapper":
            self.pool = QPMapper(working, num_queries=1, num_layers=num_layers, num_heads=num_heads, dropout=dropout,
                                 activation=activation)
        self.norm = nn.RMSNorm(working, eps=norm_eps)
        self.summary: QPMapper | None = None
        if global_layers:
            self.summary = QPMapper(working, num_queries=1, num_layers=global_layers, num_heads=num_heads,
                                    dropout=dropout, activation=activation)
        self.output = nn.Linear(working, out_dim)

    def num_output_tokens(
        self, num_tokens: int, grid: tuple[int, int] | None = None, has_cls: bool = True, num_layers: int = 1
    ) -> int:
        """Evaluation count: per layer, CLS + one token per group (``rand``: all tokens; one token
        with the global QPMapper)."""
        per_layer, rest = divmod(num_tokens, num_layers)
        if rest:
            raise ValueError(f"{num_tokens} tokens do not split over {num_layers} layers")
        if self.summary is not None:
            return num_layers
        patches = per_layer - int(has_cls)
        kept = patches if self.mode == "rand" or patches == 0 else num_groups(patches, grid, self.reduction)
        return num_layers * (kept + int(has_cls))

    def reduce(self, patches: Tensor, mask: Tensor, grid: tuple[int, int] | None) -> Tensor:
        """Patch tokens ``[B, P, W]`` -> reduced tokens ``[B, K, W]``."""
        if self.mode == "rand":
            if not self.training:
                return patches
            count = patches.shape[1]
            keep = min(count, max(1, round(sample_keep_fraction(**self.keep) * count)))
            chosen = torch.randperm(count)[:keep].sort().values.to(patches.device)
            return patches[:, chosen]
        groups, valid = group_tokens(patches, mask, grid, self.reduction)
        batch, count, size, dim = groups.shape
        if self.mode == "avgpool" and self.average == "tokens":
            weights = valid.unsqueeze(-1).to(groups.dtype)
            return (groups * weights).sum(2) / weights.sum(2).clamp(min=1)
        groups = groups * valid.unsqueeze(-1).to(groups.dtype)  # padding positions hold zeros
        if self.mode == "avgpool":  # AvgPool1d(reduction) over each token's channels, tokens concatenated
            return groups.unflatten(-1, (dim // self.reduction, self.reduction)).mean(-1).reshape(batch, count, dim)
        if self.mode == "linear":
            return self.pool(groups.reshape(batch, count, size * dim))
        out = self.pool(groups.reshape(batch * count, size, dim), valid.reshape(batch * count, size))
        return out.reshape(batch, count, dim)

    def forward(self, features: PerceptualFeatures) -> Tensor:
        batch, layers, count, _ = features.tokens.shape
        tokens = self.input(features.tokens.reshape(batch * layers, count, -1))  # every layer resampled alike
        mask = features.mask.repeat_interleave(layers, dim=0)
        keep = torch.ones(count, dtype=torch.bool, device=tokens.device)
        parts = []
        if features.cls_index is not None:
            keep[features.cls_index] = False
            parts.append(tokens[:, features.cls_index : features.cls_index + 1])
        patches, patch_mask = tokens[:, keep], mask[:, keep]
        if patches.shape[1]:
            parts.append(self.reduce(patches, patch_mask, features.grid))
        hidden = self.norm(torch.cat(parts, dim=1))
        if self.summary is not None:
            hidden = self.summary(hidden)
        hidden = hidden.reshape(batch, layers * hidden.shape[1], self.width)
        return self.output(hidden)
