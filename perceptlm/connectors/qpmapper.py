"""QPMapper: learned queries appended after the perceptual tokens, read out after a small
post-norm transformer encoder (DePALM §3.2, "QPMapper"; MAPL's mapper is the same structure)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class QPMapper(nn.Module):
    """Self-attention over ``[perceptual tokens; queries]``; the outputs at the query positions are
    the summary tokens.

    Defaults follow DePALM: queries ~ N(0, 1), 8 heads, FFN width equal to ``width``, GELU
    (``activation=None``: a linear FFN, as DePALM's resamplers run it), dropout 0.1, LayerNorm eps
    1e-4, post-norm layers.
    """

    def __init__(
        self,
        width: int,
        num_queries: int = 32,
        num_layers: int = 2,
        num_heads: int = 8,
        ffn_width: int | None = None,
        dropout: float = 0.1,
        layer_norm_eps: float = 1e-4,
        activation: str | None = "gelu",
    ) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"QPMapper width {width} must be divisible by num_heads={num_heads}")
        self.num_queries = num_queries
        self.queries = nn.Parameter(torch.randn(num_queries, width))
        layer = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=num_heads,
            dim_feedforward=ffn_width or width,
            dropout=dropout,
            activation=activation if activation is not None else nn.Identity(),
            layer_norm_eps=layer_norm_eps,
            batch_first=True,
            norm_first=False,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """``tokens [B, N, width]``, ``mask [B, N]`` (True = real) -> ``[B, num_queries, width]``
        (``[B, N, width]`` with no queries: a plain post-norm encoder)."""
        batch = tokens.shape[0]
        queries = self.queries.unsqueeze(0).expand(batch, -1, -1).to(tokens.dtype)
        sequence = torch.cat([tokens, queries], dim=1)
        padding = None
        if mask is not None and not bool(mask.all()):
            real = torch.cat([mask, mask.new_ones(batch, self.num_queries)], dim=1)
            padding = ~real
        out = self.encoder(sequence, src_key_padding_mask=padding)
        return out[:, -self.num_queries :] if self.num_queries else out
