"""DePALM's "c-attn" (Vallaeys et al. 2024 §3.3; ``config/mod/cross_attn.yaml`` and
``CrossAttentionFeatExtractor`` in its released code): ONE small cross-attention block shared by
every target layer and applied to the hidden state entering each of them.

For a hidden state ``x`` entering target layer ``l`` and the connector's tokens ``v`` of the encoder
layer assigned to ``l`` (encoder layers spread over the target layers in proportion: 4 -> 12, 3
each), with width ``W`` (1024) and ``n`` heads (8):

- queries: ``x -> Linear(H, W) -> GELU -> Linear(W, W) -> RMSNorm -> Linear(W, W)``;
- keys, values: ``Linear(W, W)`` of ``v`` (the connector maps to width ``W``, not the LLM width);
- ``n``-head attention of every text position over ``v`` (dropout in training only), ``RMSNorm``,
  ``Linear(W, H)``;
- ``x + tanh(g) * out`` with one scalar gate ``g`` shared by all target layers, initialised at 0:
  the LLM is unchanged at initialisation. No feed-forward block.

About 21M trainable parameters with LLaMA-7B and CLIP ViT-L/14, connector and 16 prompt tokens
included. Two defects of the released code are not repeated: its head reshaping mixes positions
(a text position reads information from later positions), and it applies attention dropout at
evaluation instead of in training. Flamingo's per-layer gated dense blocks are
:mod:`perceptlm.injection.cross_attention`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceptlm.injection.base import PerLayerInjection, target_layers
from perceptlm.llm.language_model import LanguageModel


class SharedCrossAttention(nn.Module):
    """The shared block: ``x + tanh(gate) * Linear(RMSNorm(Attention(q(x), k(v), v(v))))``."""

    def __init__(self, hidden: int, width: int = 1024, num_heads: int = 8, dropout: float = 0.1,
                 norm_eps: float = 1e-4) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"c-attn width {width} must be divisible by num_heads={num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.query_mlp = nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, width),
                                       nn.RMSNorm(width, eps=norm_eps))
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.norm = nn.RMSNorm(width, eps=norm_eps)
        self.out_proj = nn.Linear(width, hidden)
        self.gate = nn.Parameter(torch.zeros(()))

    def heads(self, states: Tensor) -> Tensor:
        """``[B, T, W]`` -> ``[B, heads, T, W / heads]``."""
        return states.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def key_values(self, visual: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``[B, heads, K, W / heads]`` of tokens ``[B, K, W]``."""
        return self.heads(self.k_proj(visual)), self.heads(self.v_proj(visual))

    def forward(self, hidden: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        queries = self.heads(self.q_proj(self.query_mlp(hidden.to(self.out_proj.weight.dtype))))
        attended = F.scaled_dot_product_attention(queries, keys.to(queries.dtype), values.to(queries.dtype),
                                                  dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(self.norm(attended.transpose(1, 2).flatten(2)))
        return hidden + (torch.tanh(self.gate) * out).to(hidden.dtype)


class SharedCrossAttentionInjection(PerLayerInjection):
    """DePALM c-attn: :class:`SharedCrossAttention` before each target layer (:func:`target_layers`;
    DePALM: ``last=-4, count=12``, layers 17-28 of 32), reading the connector's tokens
    ``[B, E, K, width]`` of the encoder layer assigned to that layer."""

    def __init__(self, layers: Sequence[int] | None = None, start: float = 0.5, end: float = 0.875, every: int = 1,
                 last: int | None = None, count: int | None = None, width: int = 1024, num_heads: int = 8,
                 dropout: float = 0.1, norm_eps: float = 1e-4) -> None:
        super().__init__()
        self.options = dict(layers=layers, start=start, end=end, every=every, last=last, count=count)
        self.width, self.num_heads, self.dropout, self.norm_eps = width, num_heads, dropout, norm_eps

    def token_width(self, llm_hidden: int) -> int:
        return self.width

    def install(self, llm: LanguageModel) -> None:
        self.layer_indices = target_layers(llm.num_layers, **self.options)
        self.block = SharedCrossAttention(llm.hidden_size, self.width, self.num_heads, self.dropout, self.norm_eps)
        for slot, index in enumerate(self.layer_indices):
            # a partial of a bound method, not a closure: a deep copy of the model rebinds it to the copy
            llm.layers[index].register_forward_pre_hook(functools.partial(self._before_layer, slot), with_kwargs=True)

    def _key_values_of(self, slot: int) -> tuple[Tensor, Tensor]:
        """The block's keys/values for target layer ``slot``: computed once per encoder layer and
        forward (or generation), not per target layer or decoding step."""
        encoder_layer = slot * self._visual.shape[1] // len(self.layer_indices)
        if encoder_layer not in self.cache:
            self.cache[encoder_layer] = self.block.key_values(self.encoder_layer(slot, len(self.layer_indices)))
        return self.cache[encoder_layer]

    def _before_layer(self, slot: int, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """The forward pre-hook of target layer ``slot``: the shared block on its input."""
        if self._visual is None:
            return None  # outside a perceptlm forward: the plain LLM
        keys, values = self._key_values_of(slot)
        hidden = args[0] if args else kwargs["hidden_states"]
        hidden = self.block(hidden, keys, values).to(hidden.dtype)  # computed in the block's dtype, back to the LLM's
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

