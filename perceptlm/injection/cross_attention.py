"""Gated cross-attention dense blocks before LLM layers: Flamingo (Alayrac et al. 2022 §2.2).

Each target layer gets its own block applied to its input hidden state through a forward pre-hook
(a public ``nn.Module`` extension point; the LLM's code is untouched): queries from the hidden state,
keys/values from the perceptual tokens, output scaled by ``tanh(gate)`` with the gate at 0, so the
LLM is unchanged at initialisation. Text positions attend only to perceptual tokens, never to other
text positions, so the block is causal. DePALM's "c-attn" (one small block shared by the target
layers) is :mod:`perceptlm.injection.shared_cross_attention`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from perceptlm.injection.base import Injection, target_layers
from perceptlm.llm.language_model import LanguageModel


class GatedCrossAttentionBlock(nn.Module):
    """``x + tanh(g_a) * CrossAttn(LN(x), v)``, then ``+ tanh(g_f) * FFN(LN(x))``; gates start at 0."""

    def __init__(self, hidden: int, num_heads: int, ffn_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.attention = nn.MultiheadAttention(hidden, num_heads, dropout=dropout, batch_first=True)
        self.attention_gate = nn.Parameter(torch.zeros(1))
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn_mult * hidden), nn.GELU(), nn.Linear(ffn_mult * hidden, hidden))
        self.ffn_gate = nn.Parameter(torch.zeros(1))

    def forward(self, hidden: Tensor, visual: Tensor) -> Tensor:
        attended, _ = self.attention(self.norm(hidden), visual, visual, need_weights=False)
        hidden = hidden + torch.tanh(self.attention_gate).to(hidden.dtype) * attended
        return hidden + torch.tanh(self.ffn_gate).to(hidden.dtype) * self.ffn(self.ffn_norm(hidden))


class CrossAttentionInjection(Injection):
    """Gated cross-attention blocks before the target layers, reading :meth:`context`'s tokens."""

    def __init__(self, layers: Sequence[int] | None = None, start: float = 0.5, end: float = 0.875,
                 every: int = 1, last: int | None = None, count: int | None = None, num_heads: int = 8,
                 ffn_mult: int = 4) -> None:
        super().__init__()
        self.options = dict(layers=layers, start=start, end=end, every=every, last=last, count=count)
        self.num_heads, self.ffn_mult = num_heads, ffn_mult
        self.blocks = nn.ModuleDict()
        self._visual: Tensor | None = None

    def install(self, llm: LanguageModel) -> None:
        hidden = llm.hidden_size
        heads = self.num_heads if hidden % self.num_heads == 0 else 1
        self.layer_indices = target_layers(llm.num_layers, **self.options)
        for index in self.layer_indices:
            self.blocks[str(index)] = GatedCrossAttentionBlock(hidden, heads, self.ffn_mult)
            # a partial of a bound method, not a closure: a deep copy of the model rebinds it to the copy
            llm.layers[index].register_forward_pre_hook(functools.partial(self._before_layer, str(index)),
                                                        with_kwargs=True)

    def _before_layer(self, key: str, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """The forward pre-hook of the target layer ``key``: its gated block on the layer's input."""
        if self._visual is None:
            return None  # outside a perceptlm forward: the plain LLM
        block = self.blocks[key]
        hidden = args[0] if args else kwargs["hidden_states"]
        dtype = block.attention_gate.dtype  # the trainable block's (float32 beside a bfloat16 LLM)
        hidden = block(hidden.to(dtype), self._visual.to(dtype)).to(hidden.dtype)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def prefix(self, visual: Tensor) -> None:
        return None  # the tokens reach the LLM through the blocks only

    def num_prefix_tokens(self, num_visual_tokens: int) -> int:
        return 0

    @contextlib.contextmanager
    def context(self, visual: Tensor) -> Iterator[None]:
        previous, self._visual = self._visual, visual
        try:
            yield
        finally:
            self._visual = previous

    def expand(self, num_beams: int) -> None:
        """Beam search repeats every sample ``num_beams`` times: repeat the perceptual tokens too."""
        if self._visual is not None:
            self._visual = self._visual.repeat_interleave(num_beams, dim=0)
