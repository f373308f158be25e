"""What of the LLM trains (DePALM §3.4's fourth axis; Garg & Bas's frozen / LoRA / full ablation).

- ``frozen``: nothing (the default).
- ``lora``: low-rank adapters through peft (``inject_adapter_in_model``; target modules default to
  peft's per-architecture choice, e.g. q_proj/v_proj for Llama).
- ``norms``: unfreeze the normalisation layers' weights and biases.
- ``full``: every LLM parameter trains.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from perceptlm.llm.language_model import LanguageModel

LLM_TUNINGS = ("frozen", "lora", "norms", "full")


def apply_llm_tuning(llm: LanguageModel, tuning: str, **options: Any) -> None:
    """Make the chosen part of ``llm`` trainable (in place)."""
    if tuning not in LLM_TUNINGS:
        raise ValueError(f"llm_tuning={tuning!r} is unknown; valid: {', '.join(LLM_TUNINGS)}")
    if tuning == "frozen":
        if options:
            raise ValueError(f"llm_tuning='frozen' takes no options, got {sorted(options)}")
        return
    if tuning == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=options.pop("r", 8), lora_alpha=options.pop("alpha", 16),
                            lora_dropout=options.pop("dropout", 0.0), **options)
        inject_adapter_in_model(config, llm.model)
        for name, parameter in llm.model.named_parameters():
            parameter.requires_grad_("lora_" in name)
    elif tuning == "norms":
        for module in llm.model.modules():
            if isinstance(module, (nn.LayerNorm,)) or "norm" in type(module).__name__.lower():
                for parameter in module.parameters(recurse=False):
                    parameter.requires_grad_(True)
    elif tuning == "full":
        llm.model.requires_grad_(True)
    llm.trainable = tuning == "full"  # dropout only when the whole LLM trains
