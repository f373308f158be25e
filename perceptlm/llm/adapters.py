"""One adapter per decoder-only architecture family: where its decoder layers live, and how a
layer turns hidden states into attention keys and values.

Embeddings, the base model and the LM head are reached through transformers' public accessors
(``get_input_embeddings``, ``base_model``, ``get_output_embeddings``); the decoder-layer list, each
layer's input norm and attention projections differ by family and are looked up here by
``config.model_type`` — never guessed.
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
                             f"(fused or post-norm projections); supported families: {sorted(k for k, a in ADAPTERS.items() if a.key_values_supported)}")
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


def adapter_for(model_type: str) -> ArchitectureAdapter:
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise ValueError(
            f"no architecture adapter for model_type={model_type!r}; supported: {sorted(ADAPTERS)}"
        ) from None
