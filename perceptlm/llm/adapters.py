"""One adapter per decoder-only architecture family: where its decoder layers live.

Embeddings, the base model and the LM head are reached through transformers' public accessors
(``get_input_embeddings``, ``base_model``, ``get_output_embeddings``); only the decoder-layer list
differs by family, and it is looked up here by ``config.model_type`` — never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where a family keeps its decoder layers, relative to ``model.base_model``."""

    layers_path: str

    def layers(self, base_model: nn.Module) -> nn.ModuleList:
        module: nn.Module = base_model
        for part in self.layers_path.split("."):
            module = getattr(module, part)
        if not isinstance(module, nn.ModuleList):
            raise TypeError(f"expected a ModuleList at base_model.{self.layers_path}, got {type(module)}")
        return module


_LLAMA_LIKE = ArchitectureAdapter("layers")

ADAPTERS: dict[str, ArchitectureAdapter] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "opt": ArchitectureAdapter("decoder.layers"),
    "gpt2": ArchitectureAdapter("h"),
    "gpt_neox": ArchitectureAdapter("layers"),
}


def adapter_for(model_type: str) -> ArchitectureAdapter:
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise ValueError(
            f"no architecture adapter for model_type={model_type!r}; supported: {sorted(ADAPTERS)}"
        ) from None
