"""Q-Former connectors: learned queries that read the perceptual tokens through cross-attention
(BLIP-2, Li et al. 2023 §3.1; Garg & Bas 2023 §2). Also MiniGPT-4's frozen Q-Former + trained
Linear, an mPLUG-Owl-style visual abstractor (64 queries) and InstructBLIP's instruction-aware
Q-Former (Dai et al. 2023 §2.2: the instruction tokens join the queries in self-attention, only the
queries cross-attend to the perceptual tokens and only they are output).

Layers are BERT-like and post-norm: self-attention over the queries, then (every
``cross_attention_freq``-th layer, from the first) cross-attention from the queries to the perceptual
tokens, then a GELU FFN; each sub-block is ``LayerNorm(x + dropout(f(x)))``. BLIP-2 defaults: 32
queries of width 768, 12 layers, 12 heads, FFN 3072, cross-attention every other layer, LayerNorm
eps 1e-12, queries ~ N(0, 0.02); a trainable LayerNorm on the frozen encoder's features (BLIP-2's
``ln_vision``); a LayerNorm on the query embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perceptlm.connectors.base import Connector, flatten_layers
from perceptlm.encoders.base import PerceptualFeatures


class QFormerLayer(nn.Module):
    """Self-attention over the queries, optional cross-attention to the features, FFN (post-norm)."""

    def __init__(self, width: int, feature_dim: int, num_heads: int, ffn_width: int, dropout: float,
                 eps: float, cross: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.self_norm = nn.LayerNorm(width, eps=eps)
        self.cross_attn: nn.MultiheadAttention | None = None
        if cross:
            self.cross_attn = nn.MultiheadAttention(width, num_heads, dropout=dropout, kdim=feature_dim,
                                                    vdim=feature_dim, batch_first=True)
            self.cross_norm = nn.LayerNorm(width, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_width), nn.GELU(), nn.Linear(ffn_width, width))
        self.ffn_norm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: Tensor, features: Tensor, padding: Tensor | None, num_queries: int | None = None,
                self_padding: Tensor | None = None) -> Tensor:
        """``queries [B, Q(+T), W]``: the first ``num_queries`` rows are queries, the rest instruction
        tokens (self-attention only; ``self_padding`` masks their padding)."""
        attended = self.self_attn(queries, queries, queries, key_padding_mask=self_padding, need_weights=False)[0]
        x = self.self_norm(queries + self.dropout(attended))
        if self.cross_attn is not None:
            q = x[:, :num_queries]
            attended = self.cross_attn(q, features, features, key_padding_mask=padding, need_weights=False)[0]
            x = torch.cat([self.cross_norm(q + self.dropout(attended)), x[:, q.shape[1]:]], dim=1)
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class QFormer(nn.Module):
    """Perceptual tokens ``[B, N, D]`` -> query outputs ``[B, num_queries, width]``."""

    def __init__(self, feature_dim: int, width: int, num_queries: int = 32, num_layers: int = 12,
                 num_heads: int = 12, cross_attention_freq: int = 2, ffn_width: int | None = None,
                 dropout: float = 0.1, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"Q-Former width {width} must be divisible by num_heads={num_heads}")
        if cross_attention_freq < 1:
            raise ValueError(f"cross_attention_freq must be >= 1 (1: every layer), got {cross_attention_freq}")
        self.num_queries, self.width = num_queries, width
        self.input_norm = nn.LayerNorm(feature_dim)
        self.queries = nn.Parameter(torch.randn(num_queries, width) * 0.02)
        self.query_norm = nn.LayerNorm(width, eps=layer_norm_eps)
        self.query_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            QFormerLayer(width, feature_dim, num_heads, ffn_width or 4 * width, dropout, layer_norm_eps,
                         cross=i % cross_attention_freq == 0)
            for i in range(num_layers)
        )

    def forward(self, tokens: Tensor, mask: Tensor | None = None, instruction: Tensor | None = None,
                instruction_mask: Tensor | None = None) -> Tensor:
        """``tokens [B, N, D]``, ``mask [B, N]`` (True = real) -> ``[B, num_queries, width]``;
        ``instruction [B, T, width]`` (with ``instruction_mask``) joins the queries' self-attention."""
        features = self.input_norm(tokens)
        padding = None if mask is None or bool(mask.all()) else ~mask
        x = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1).to(features.dtype)
        x = self.query_dropout(self.query_norm(x))
        self_padding = None
        if instruction is not None:
            x = torch.cat([x, self.query_dropout(self.query_norm(instruction.to(x.dtype)))], dim=1)
            if instruction_mask is not None:
                self_padding = torch.cat([instruction_mask.new_zeros(x.shape[0], self.num_queries, dtype=torch.bool),
                                          ~instruction_mask.bool()], dim=1)
        for layer in self.layers:
            x = layer(x, features, padding, self.num_queries, self_padding)
        return x[:, : self.num_queries]


class QFormerConnector(Connector):
    """A :class:`QFormer` then Linear(width -> LLM width): ``num_queries`` tokens.

    ``width`` defaults to the feature width. ``freeze=True`` (MiniGPT-4) freezes the Q-Former part:
    ``requires_grad=False`` (so it is outside the optimizer) and eval mode (no dropout) even when the
    module trains; only the output Linear trains. ``init_from``: a state dict or Lightning checkpoint
    path (e.g. a trained ``blip2`` run) whose ``connector.qformer.*`` / ``qformer.*`` weights
    initialise the Q-Former. ``instruction_aware=True`` (InstructBLIP) sets :attr:`reads_instruction`:
    :meth:`forward` takes the instruction as LLM token embeddings ``[B, T, out_dim]`` (+ mask),
    projected to the Q-Former width by a trained Linear — InstructBLIP embeds it with the Q-Former's
    own BERT vocabulary instead.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int | None = None,
        num_queries: int = 32,
        num_layers: int = 12,
        num_heads: int = 12,
        cross_attention_freq: int = 2,
        ffn_width: int | None = None,
        dropout: float = 0.1,
        layer_norm_eps: float = 1e-12,
        freeze: bool = False,
        init_from: str | None = None,
        instruction_aware: bool = False,
    ) -> None:
        super().__init__()
        width = width or in_dim
        self.in_dim, self.out_dim, self.frozen = in_dim, out_dim, freeze
        self.qformer = QFormer(in_dim, width, num_queries, num_layers, num_heads, cross_attention_freq,
                               ffn_width, dropout, layer_norm_eps)
        self.reads_instruction = instruction_aware
        self.instruction = nn.Linear(out_dim, width) if instruction_aware else None
        self.output = nn.Linear(width, out_dim)
        if init_from:
            self.load_qformer(init_from)
        if freeze:
            self.qformer.requires_grad_(False)
            self.qformer.eval()

    def load_qformer(self, path: str) -> None:
        """Copy Q-Former weights from a state dict / Lightning checkpoint file."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"init_from={path!r}: no such checkpoint file")
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        for prefix in ("connector.qformer.", "qformer."):
            found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if found:
                self.qformer.load_state_dict(found, strict=True)
                return
        raise KeyError(f"init_from={path!r} holds no 'connector.qformer.*' or 'qformer.*' weights")

    def train(self, mode: bool = True) -> "QFormerConnector":
        super().train(mode)
        if self.frozen:
            self.qformer.eval()
        return self

    def num_output_tokens(
        self, num_tokens: int, grid: tuple[int, int] | None = None, has_cls: bool = True, num_layers: int = 1
    ) -> int:
        return self.qformer.num_queries

    def forward(self, features: PerceptualFeatures, instruction: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``instruction``: ``(embeddings [B, T, out_dim], mask [B, T])`` of the instruction text,
        used when :attr:`reads_instruction` (ignored otherwise)."""
        tokens, mask = flatten_layers(features)
        if self.instruction is None or instruction is None:
            return self.output(self.qformer(tokens, mask))
        embeddings, instruction_mask = instruction
        projected = self.instruction(embeddings.to(self.instruction.weight.dtype))
        return self.output(self.qformer(tokens, mask, projected, instruction_mask))
