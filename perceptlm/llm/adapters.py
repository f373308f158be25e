"""One adapter per decoder-only architecture family: where its decoder layers live, and how a
layer turns hidden states into attention keys and values.

Embeddings, the base model and the LM head are reached through transformers' public accessors
(``get_input_embeddings``, ``base_model``, ``get_output_embeddings``); the decoder-layer list, each
layer's input norm and attention projections differ by family. A family in :data:`ADAPTERS` is
looked up by ``config.model_type``; any other decoder-only model is read by :func:`discover` from
transformers' module layout (the decoder's ``ModuleList``, each layer's attention module and its
separate key/value projections), and what it cannot find it names in the error.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where a family keeps its decoder layers (relative to ``model.base_model``), each layer's
    self-attention module and its input norm; ``fused_qkv``: one projection gives q, k, v (GPT-2)."""

    layers_path: str
    attention: str = "self_attn"
    input_norm: str = "input_layernorm"
    fused_qkv: bool = False
    key_values_supported: bool = True
    unsupported_reason: str = "fused or post-norm projections"

    def layers(self, base_model: nn.Module) -> nn.ModuleList:
        module: nn.Module = base_model
        for part in self.layers_path.split("."):
            module = getattr(module, part)
        if not isinstance(module, nn.ModuleList):
            raise TypeError(f"expected a ModuleList at base_model.{self.layers_path}, got {type(module)}")
        return module

    def key_values(self, layer: nn.Module, hidden: Tensor, normalise: bool = True) -> tuple[Tensor, Tensor]:
        """Keys and values ``[B, Hkv, K, d]`` that ``layer``'s self-attention computes for hidden
        states ``[B, K, H]`` entering the layer (its input norm first when ``normalise``), without
        position encoding."""
        if not self.key_values_supported:
            raise ValueError(f"per-layer key/value injection is not supported for {type(layer).__name__} "
                             f"({self.unsupported_reason}); prefix and cross-attention presets work on it. Per-layer "
                             "keys/values need an input norm and separate k_proj / v_proj (e.g. the families "
                             f"{sorted(k for k, a in ADAPTERS.items() if a.key_values_supported)})")
        attention = getattr(layer, self.attention)
        if normalise:
            hidden = getattr(layer, self.input_norm)(hidden)
        head_dim = attention.head_dim
        if self.fused_qkv:
            _, keys, values = attention.c_attn(hidden).split(attention.split_size, dim=2)
        else:
            keys, values = attention.k_proj(hidden), attention.v_proj(hidden)
        keys = keys.view(*hidden.shape[:2], -1, head_dim)
        if getattr(attention, "k_norm", None) is not None:  # Qwen3, OLMo-2: per-head key norm
            keys = attention.k_norm(keys)
        values = values.view(*hidden.shape[:2], -1, head_dim)
        return keys.transpose(1, 2), values.transpose(1, 2)


_LLAMA_LIKE = ArchitectureAdapter("layers")

ADAPTERS: dict[str, ArchitectureAdapter] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": ArchitectureAdapter("layers", key_values_supported=False),
    "olmo": _LLAMA_LIKE,
    "olmo2": ArchitectureAdapter("layers", key_values_supported=False),
    "opt": ArchitectureAdapter("decoder.layers", input_norm="self_attn_layer_norm"),
    "gpt2": ArchitectureAdapter("h", attention="attn", input_norm="ln_1", fused_qkv=True),
    "gpt_neox": ArchitectureAdapter("layers", key_values_supported=False),
}


LAYER_PATHS = ("layers", "decoder.layers", "h", "blocks", "transformer.h")
ATTENTION_NAMES = ("self_attn", "attn", "self_attention", "attention")
INPUT_NORM_NAMES = ("input_layernorm", "ln_1", "attention_norm", "norm1")


def _find(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def discover(base_model: nn.Module, model_type: str) -> ArchitectureAdapter:
    """The adapter of a decoder-only model outside :data:`ADAPTERS`, read from its modules: the first
    ``ModuleList`` among :data:`LAYER_PATHS` of ``base_model``, its layers' attention module
    (:data:`ATTENTION_NAMES`) and input norm (:data:`INPUT_NORM_NAMES`). Per-layer keys/values are
    served where the attention has separate ``k_proj`` / ``v_proj`` and any ``k_norm`` is per head;
    otherwise they are refused with the reason (prefix and cross-attention presets need none of it)."""
    path = next((p for p in LAYER_PATHS if isinstance(_find(base_model, p), nn.ModuleList)), None)
    if path is None:
        raise ValueError(f"model_type={model_type!r} ({type(base_model).__name__}): no decoder-layer list at "
                         f"base_model.{{{', '.join(LAYER_PATHS)}}}; add an ArchitectureAdapter for it to "
                         f"perceptlm.llm.adapters.ADAPTERS (known: {sorted(ADAPTERS)})")
    layer = _find(base_model, path)[0]
    attention_name = next((n for n in ATTENTION_NAMES if isinstance(getattr(layer, n, None), nn.Module)), None)
    norm = next((n for n in INPUT_NORM_NAMES if isinstance(getattr(layer, n, None), nn.Module)), None)
    attention = getattr(layer, attention_name) if attention_name else None
    reason = None
    if attention is None:
        reason = f"no attention module among {ATTENTION_NAMES}"
    elif not (isinstance(getattr(attention, "k_proj", None), nn.Module) and isinstance(getattr(attention, "v_proj", None), nn.Module)):
        reason = f"{type(attention).__name__} has no separate k_proj / v_proj (fused projections)"
    elif norm is None:
        reason = f"no input norm among {INPUT_NORM_NAMES} (post-norm layers)"
    elif getattr(attention, "k_norm", None) is not None and getattr(attention.k_norm, "weight", None) is not None \
            and attention.k_norm.weight.numel() != getattr(attention, "head_dim", -1):
        reason = "its key norm spans all heads, not one head"
    return ArchitectureAdapter(path, attention=attention_name or "self_attn", input_norm=norm or "input_layernorm",
                               key_values_supported=reason is None, unsupported_reason=reason or "")


def adapter_for(model_type: str, base_model: nn.Module | None = None) -> ArchitectureAdapter:
    """The family's adapter from :data:`ADAPTERS`, else :func:`discover` on ``base_model``."""
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    if base_model is None:
        raise ValueError(f"no architecture adapter for model_type={model_type!r}; known: {sorted(ADAPTERS)} "
                         "(pass the model to discover its layout)")
    return discover(base_model, model_type)
