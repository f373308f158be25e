"""Extra keys/values inside chosen LLM layers, through transformers' attention-function registry.

Inner injection (DePALM §3.3 "inner", eP-ALM) and LLaMA-Adapter's adaption prompts (Zhang et al.
2023 §3.2) both give the text positions of a layer something more to attend to without adding
positions to the sequence. The LLM keeps its own code: :func:`enable` registers a wrapper of ``sdpa``
(``perceptlm_sdpa``) in ``AttentionInterface`` and the sdpa mask function in ``AttentionMaskInterface`` (public registries), and switches the model to
it with ``set_attn_implementation``. The wrapper is the base function unless a :class:`KVSource`
registered for that attention module is active; then, for each query,

- ``gated=False``: one softmax over ``[extra keys; the layer's own keys]`` (tokens prepended inside
  the layer, visible to every text position, removed at its output);
- ``gated=True``: ``attention(text) + tanh(gate_h) * softmax-attention(extra)`` with a separate
  softmax and one gate per head (LLaMA-Adapter's zero-init attention).

Extra keys carry no rotary/absolute position (as LLaMA-Adapter's prompts). They are not written to
the KV cache, so a cached decoding step sees them without recomputing them.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_PREFIX = "perceptlm_"


class KVSource(Protocol):
    """What a target attention module asks its owner for, during a forward."""

    def extra_key_values(self, module: nn.Module) -> tuple[Tensor, Tensor, Tensor | None] | None:
        """``(keys, values, gate)`` ``[B, Hkv, K, d]`` for this attention module, with ``gate`` ``[H]``
        (gated attention) or None (joint softmax); None when inactive."""


# attention module -> the sources registered on it (weak: a discarded InterfaceModule unregisters)
_SOURCES: "weakref.WeakKeyDictionary[nn.Module, list[weakref.ReferenceType]]" = weakref.WeakKeyDictionary()


def register_source(attention: nn.Module, source: KVSource) -> None:
    _SOURCES.setdefault(attention, []).append(weakref.ref(source))


def _active(module: nn.Module) -> tuple[Tensor, Tensor, Tensor | None] | None:
    for ref in _SOURCES.get(module, ()):
        source = ref()
        extra = source.extra_key_values(module) if source is not None else None
        if extra is not None:
            return extra
    return None


def _repeat(states: Tensor, groups: int) -> Tensor:
    return states if groups == 1 else states.repeat_interleave(groups, dim=1)


def _boolean_mask(mask: Tensor | None, query_length: int, key_length: int, device: torch.device) -> Tensor:
    """The base mask as booleans ``[B|1, 1, T, S]`` (True = attend); None means causal over the cache."""
    if mask is None:
        rows = torch.arange(query_length, device=device)[:, None] + (key_length - query_length)
        return (torch.arange(key_length, device=device)[None, :] <= rows)[None, None]
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2  # additive float masks (eager)


def _wrap(base: Callable) -> Callable:
    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                  dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Tensor, None]:
        extra = _active(module)
        if extra is None:
            return base(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        extra_keys, extra_values, gate = extra
        groups = query.shape[1] // key.shape[1]
        key, value = _repeat(key, groups), _repeat(value, groups)
        extra_keys = _repeat(extra_keys.to(query.dtype), query.shape[1] // extra_keys.shape[1])
        extra_values = _repeat(extra_values.to(query.dtype), query.shape[1] // extra_values.shape[1])
        mask = _boolean_mask(attention_mask, query.shape[2], key.shape[2], query.device)
        mask = mask[..., -key.shape[2]:]
        if gate is None:
            visible = mask.new_ones(*mask.shape[:-1], extra_keys.shape[2])
            output = F.scaled_dot_product_attention(
                query, torch.cat([extra_keys, key], dim=2), torch.cat([extra_values, value], dim=2),
                attn_mask=torch.cat([visible.expand(*mask.shape[:-1], -1), mask], dim=-1),
                dropout_p=dropout, scale=scaling)
        else:
            output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
            adapted = F.scaled_dot_product_attention(query, extra_keys, extra_values, dropout_p=dropout, scale=scaling)
            output = output + torch.tanh(gate).to(output.dtype).view(1, -1, 1, 1) * adapted
        return output.transpose(1, 2).contiguous(), None

    return attention


def enable(model: nn.Module) -> None:
    """Switch ``model`` to the wrapped version of its attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = model.config._attn_implementation
    if current == _PREFIX + "sdpa":
        return
    if current != "sdpa":
        raise ValueError(f"per-layer key/value injection runs on the 'sdpa' attention implementation; this "
                         f"LLM uses {current!r} (load it with attn_implementation='sdpa')")
    name = _PREFIX + "sdpa"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _wrap(ALL_ATTENTION_FUNCTIONS["sdpa"]))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.set_attn_implementation(name)
