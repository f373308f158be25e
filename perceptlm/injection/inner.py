"""Inner injection: perceptual tokens as extra keys/values inside upper LLM layers.

- DePALM §3.3 "inner" (and its "QP, inner" preset): the tokens of encoder layer ``e`` are prepended
  inside the LLM layers assigned to ``e`` and removed at their output, so they only add keys and
  values there; encoder layers are spread over the target LLM layers in proportion (4 encoder layers
  -> 12 LLM layers: 3 each); optional per-layer RMSNorm + learned scale and bias on the tokens.
- eP-ALM (Shukor et al. 2023 §3): one CLS token per encoder layer, "replaced at each layer" of a block
  of upper LLM layers: a token that is replaced at the next layer only ever contributes its
  keys/values at the layer it enters, which is exactly this mechanism.
- LLaMA-Adapter (Zhang et al. 2023 §3.2-3.3): ``adaption_prompts`` learned tokens per target layer,
  the projected global visual feature added to each, attended through a separate softmax scaled by
  a zero-initialised ``tanh`` gate per head: the LLM is unchanged at initialisation.

Tokens entering a layer pass through its input norm (``llm_norm=True``, as prepended tokens would);
LLaMA-Adapter's prompts feed the projections directly (``llm_norm=False``). Keys carry no position.
The mechanism lives in :mod:`perceptlm.llm.attention` (transformers' attention registry).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from perceptlm.injection.base import Injection
from perceptlm.injection.cross_attention import target_layers
from perceptlm.llm import attention
from perceptlm.llm.language_model import LanguageModel


class InnerInjection(Injection):
    """Per-layer keys/values from perceptual tokens ``[B, E, K, H]`` (``E`` encoder layers, each
    mapped separately by the connector) in the target layers (explicit ``layers``, or every
    ``every``-th layer of ``[start, end)`` of the depth)."""

    per_encoder_layer = True

    def __init__(self, layers: Sequence[int] | None = None, start: float = 0.5, end: float = 0.875, every: int = 1,
                 token_norm: bool = False, llm_norm: bool = True, gated: bool = False, adaption_prompts: int = 0) -> None:
        super().__init__()
        self.options = dict(layers=layers, start=start, end=end, every=every)
        self.token_norm, self.llm_norm, self.gated = token_norm, llm_norm, gated
        self.num_prompts = adaption_prompts
        self._visual: Tensor | None = None
        self._key_values: dict[int, tuple[Tensor, Tensor]] = {}
        self._slots: dict[int, int] = {}

    def install(self, llm: LanguageModel) -> None:
        self._llm = [llm]  # a reference, not a submodule: the frozen LLM stays out of this state dict
        self.layer_indices = target_layers(llm.num_layers, **self.options)
        count, hidden = len(self.layer_indices), llm.hidden_size
        if self.token_norm:  # DePALM: per-layer RMSNorm, then a learned scale and bias
            self.norm = nn.RMSNorm(hidden, elementwise_affine=False)
            self.scale = nn.Parameter(torch.ones(count, hidden))
            self.bias = nn.Parameter(torch.zeros(count, hidden))
        if self.gated:
            self.gates = nn.Parameter(torch.zeros(count, llm.config.num_attention_heads))
        if self.num_prompts:
            self.prompts = nn.Parameter(torch.randn(count, self.num_prompts, hidden) * 0.02)
        for slot, index in enumerate(self.layer_indices):
            module = getattr(llm.layers[index], llm.adapter.attention)
            self._slots[id(module)] = slot
            attention.register_source(module, self)
        attention.enable(llm.model)

    def tokens(self, slot: int) -> Tensor:
        """The tokens entering target layer ``slot``: its encoder layer's tokens (in proportion),
        normalised/scaled, added to the adaption prompts when there are any."""
        visual = self._visual
        encoder_layer = slot * visual.shape[1] // len(self.layer_indices)
        tokens = visual[:, encoder_layer]
        if self.token_norm:
            tokens = self.norm(tokens) * self.scale[slot] + self.bias[slot]
        if self.num_prompts:
            tokens = self.prompts[slot].unsqueeze(0) + tokens.mean(dim=1, keepdim=True)
        return tokens

    def extra_key_values(self, module: nn.Module) -> tuple[Tensor, Tensor, Tensor | None] | None:
        slot = self._slots.get(id(module))
        if self._visual is None or slot is None:
            return None
        if slot not in self._key_values:  # once per forward / generation, not per decoding step
            llm = self._llm[0]
            layer = llm.layers[self.layer_indices[slot]]
            tokens = self.tokens(slot).to(next(layer.parameters()).dtype)
            self._key_values[slot] = llm.adapter.key_values(layer, tokens, normalise=self.llm_norm)
        keys, values = self._key_values[slot]
        return keys, values, self.gates[slot] if self.gated else None

    def prefix(self, visual: Tensor) -> None:
        return None  # the tokens reach the LLM as keys/values inside the target layers only

    def num_prefix_tokens(self, num_visual_tokens: int) -> int:
        return 0

    def num_perceptual_tokens(self, connector_tokens: int) -> int:
        """LLaMA-Adapter: the adaption prompts carry the features (``num_prompts`` per layer)."""
        return self.num_prompts or connector_tokens

    @contextlib.contextmanager
    def context(self, visual: Tensor) -> Iterator[None]:
        if visual.dim() != 4:
            raise ValueError(f"inner injection takes tokens [B, encoder layers, K, H], got shape {tuple(visual.shape)}")
        previous = self._visual, self._key_values
        self._visual, self._key_values = visual, {}
        try:
            yield
        finally:
            self._visual, self._key_values = previous

    def expand(self, num_beams: int) -> None:
        if self._visual is not None:
            self._visual = self._visual.repeat_interleave(num_beams, dim=0)
            self._key_values = {}
