"""Inner injection: perceptual tokens as extra keys/values inside upper LLM layers.

- DePALM §3.3 "inner" (and its "QP, inner" preset): the tokens of encoder layer ``e`` are prepended
  inside the LLM layers assigned to ``e`` and removed at their output, so they only add keys and
  values there; encoder layers are spread over the target LLM layers in proportion (4 encoder layers
  -> 12 LLM layers: 3 each); optional per-layer RMSNorm (with its weight, eps 1e-4) + learned scale
  and bias on the tokens, as DePALM's ``token_norm`` and ``bias_tuning``.
- eP-ALM (Shukor et al. 2023 §3): one CLS token per encoder layer, "replaced at each layer" of a block
  of upper LLM layers: a token that is replaced at the next layer only ever contributes its
  keys/values at the layer it enters, which is exactly this mechanism.
- LLaMA-Adapter (Zhang et al. 2023 §3.2-3.3): ``adaption_prompts`` learned tokens per target layer,
  the projected global visual feature added to each, attended through a separate softmax scaled by
  a zero-initialised ``tanh`` gate per head: the LLM is unchanged at initialisation.

Tokens entering a layer pass through its input norm (``llm_norm=True``, as prepended tokens would);
LLaMA-Adapter's prompts feed the projections directly (``llm_norm=False``).

Positions (``key_positions``): DePALM prepends the K tokens inside the layer and renumbers the
layer's positions from 0, so with rotary position embeddings the tokens sit at 0..K-1 and the text
right after them. Rotary attention depends on position differences only, so ``"before_text"`` rotates
the extra keys at positions -K..-1 and leaves the text's own positions alone: the same attention
scores, with the KV cache of the text untouched. LLMs with learned absolute positions (OPT) add
them at the input only, so the tokens carry none there, as in DePALM. ``"none"``: keys without
position (LLaMA-Adapter's prompts). The mechanism lives in :mod:`perceptlm.llm.attention`
(transformers' attention registry).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceptlm.injection.base import PerLayerInjection, target_layers
from perceptlm.llm import attention
from perceptlm.llm.language_model import LanguageModel


class InnerInjection(PerLayerInjection):
    """Per-layer keys/values from perceptual tokens ``[B, E, K, H]`` (``E`` encoder layers, each
    mapped separately by the connector) in the target layers (:func:`target_layers`: explicit
    ``layers``, DePALM's ``last``/``count``, or every ``every``-th layer of ``[start, end)``)."""

    # torch.compile's trace of the attention with extra keys/values (sources looked up per attention
    # module) gives other outputs than eager: measured |diff| 0.04-0.07 in the target layers of
    # test-tiny-llama, with the "eager" backend too. compile_llm refuses it rather than run unchecked.
    compilable = False

    def __init__(self, layers: Sequence[int] | None = None, start: float = 0.5, end: float = 0.875, every: int = 1,
                 last: int | None = None, count: int | None = None, token_norm: bool = False,
                 norm_eps: float = 1e-4, llm_norm: bool = True, gated: bool = False, adaption_prompts: int = 0,
                 key_positions: Literal["none", "before_text"] = "none") -> None:
        super().__init__()
        if key_positions not in ("none", "before_text"):
            raise ValueError(f"key_positions={key_positions!r} is unknown; valid: 'none', 'before_text'")
        self.options = dict(layers=layers, start=start, end=end, every=every, last=last, count=count)
        self.token_norm, self.norm_eps, self.llm_norm, self.gated = token_norm, norm_eps, llm_norm, gated
        self.num_prompts, self.key_positions = adaption_prompts, key_positions
        self._slots: dict[int, int] | None = {}

    def install(self, llm: LanguageModel) -> None:
        self._llm = [llm]  # a reference, not a submodule: the frozen LLM stays out of this state dict
        self.layer_indices = target_layers(llm.num_layers, **self.options)
        count, hidden = len(self.layer_indices), llm.hidden_size
        if self.token_norm:  # DePALM: per-layer RMSNorm (its weight), then a learned scale and bias
            self.norm_weight = nn.Parameter(torch.ones(count, hidden))
            self.scale = nn.Parameter(torch.ones(count, hidden))
            self.bias = nn.Parameter(torch.zeros(count, hidden))
        if self.gated:
            self.gates = nn.Parameter(torch.zeros(count, llm.config.num_attention_heads))
        if self.num_prompts:
            self.prompts = nn.Parameter(torch.randn(count, self.num_prompts, hidden) * 0.02)
        self._link()
        attention.enable(llm.model)

    def _link(self) -> None:
        """Key the target attention modules to their slots and register as their key/value source."""
        llm = self._llm[0]
        self._slots = {}
        for slot, index in enumerate(self.layer_indices):
            module = getattr(llm.layers[index], llm.adapter.attention)
            self._slots[id(module)] = slot
            attention.register_source(module, self)

    def __deepcopy__(self, memo: dict) -> "InnerInjection":
        """A deep copy (of the whole model, or of this injection with its own copy of the LLM)
        serves the copied attention modules, which are keyed and registered by identity: it links
        to them when it is first used (the copied LLM may still be under construction here)."""
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__dict__.update(copy.deepcopy(self.__dict__, memo))
        copied._slots = None
        return copied

    def context(self, visual: Tensor) -> contextlib.AbstractContextManager[None]:
        if self._slots is None:  # a deep copy, first used
            self._link()
        return super().context(visual)

    def tokens(self, slot: int) -> Tensor:
        """The tokens entering target layer ``slot``: its encoder layer's tokens (in proportion),
        normalised/scaled, added to the adaption prompts when there are any."""
        tokens = self.encoder_layer(slot, len(self.layer_indices))
        if self.token_norm:
            tokens = F.rms_norm(tokens, (tokens.shape[-1],), self.norm_weight[slot], self.norm_eps)
            tokens = tokens * self.scale[slot] + self.bias[slot]
        if self.num_prompts:
            tokens = self.prompts[slot].unsqueeze(0) + tokens.mean(dim=1, keepdim=True)
        return tokens

    def extra_key_values(self, module: nn.Module) -> tuple[Tensor, Tensor, Tensor | None] | None:
        slot = self._slots.get(id(module))
        if self._visual is None or slot is None:
            return None
        if slot not in self.cache:  # once per forward / generation, not per decoding step
            llm = self._llm[0]
            layer = llm.layers[self.layer_indices[slot]]
            tokens = self.tokens(slot).to(next(layer.parameters()).dtype)
            keys, values = llm.adapter.key_values(layer, tokens, normalise=self.llm_norm)
            if self.key_positions == "before_text":
                keys = rotate_before_text(llm, layer, keys)
            self.cache[slot] = keys, values
        keys, values = self.cache[slot]
        return keys, values, self.gates[slot] if self.gated else None

    def num_perceptual_tokens(self, connector_tokens: int) -> int:
        """LLaMA-Adapter: the adaption prompts carry the features (``num_prompts`` per layer)."""
        return self.num_prompts or connector_tokens


def rotate_before_text(llm: LanguageModel, layer: nn.Module, keys: Tensor) -> Tensor:
    """Keys ``[B, Hkv, K, d]`` of K tokens placed right before the text, rotated with the LLM's own
    rotary embedding at positions -K..-1 (the text starts at 0); unchanged for LLMs without rotary
    embeddings (learned absolute positions are added at the input only)."""
    rotary = getattr(llm.base, "rotary_emb", None)
    if rotary is None:
        return keys
    attention = getattr(layer, llm.adapter.attention)
    apply = getattr(importlib.import_module(type(attention).__module__), "apply_rotary_pos_emb", None)
    if apply is None:
        raise ValueError(f"{type(attention).__name__} has rotary embeddings but no apply_rotary_pos_emb in its module; "
                         f"use key_positions='none' for this LLM")
    count = keys.shape[2]
    positions = torch.arange(-count, 0, device=keys.device)[None]
    options = {}
    if "layer_type" in inspect.signature(rotary.forward).parameters:  # Gemma 3: a rotary base per attention type
        layer_types = getattr(llm.config, "layer_types", None)
        options["layer_type"] = getattr(attention, "layer_type", None) or layer_types[attention.layer_idx]
    cos, sin = rotary(keys, positions, **options)
    rotated, _ = apply(keys, keys, cos, sin)
    return rotated
