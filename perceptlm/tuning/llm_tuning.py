"""What of the LLM trains (DePALM §3.4's fourth axis; Garg & Bas's frozen / LoRA / full ablation).

:data:`LLM_TUNINGS` maps each name to the function that applies it (``fn(llm, **options)``, in
place); :func:`apply_llm_tuning` looks the name up and checks the options.

- ``frozen``: nothing (the default).
- ``lora``: low-rank adapters through peft (``inject_adapter_in_model``; target modules default to
  peft's per-architecture choice, e.g. q_proj/v_proj for Llama).
- ``norms``: unfreeze the normalisation layers' weights and biases.
- ``full``: every LLM parameter trains.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from perceptlm.llm.language_model import LanguageModel


def frozen(llm: LanguageModel) -> None:
    """Nothing of the LLM trains."""


def lora(llm: LanguageModel, r: int = 8, alpha: int = 16, dropout: float = 0.0, **peft_options: Any) -> None:
    """LoRA adapters of rank ``r`` (scale ``alpha``); further options go to peft's ``LoraConfig``
    (e.g. ``target_modules``). Only the adapters train."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, **peft_options)
    inject_adapter_in_model(config, llm.model)
    for name, parameter in llm.model.named_parameters():
        parameter.requires_grad_("lora_" in name)


def norms(llm: LanguageModel) -> None:
    """The normalisation layers' weights and biases train."""
    for module in llm.model.modules():
        if isinstance(module, (nn.LayerNorm,)) or "norm" in type(module).__name__.lower():
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(True)


def full(llm: LanguageModel) -> None:
    """Every LLM parameter trains."""
    llm.model.requires_grad_(True)


LLM_TUNINGS: dict[str, Callable[..., None]] = {"frozen": frozen, "lora": lora, "norms": norms, "full": full}


def tuning_arguments(tuning: str) -> list[str]:
    """The named options of ``tuning`` (LoRA also passes others on to peft)."""
    parameters = inspect.signature(LLM_TUNINGS[tuning]).parameters
    return [name for name, p in parameters.items() if name != "llm" and p.kind is not p.VAR_KEYWORD]


def apply_llm_tuning(llm: LanguageModel, tuning: str, **options: Any) -> None:
    """Make the chosen part of ``llm`` trainable (in place)."""
    if tuning not in LLM_TUNINGS:
        raise ValueError(f"llm_tuning={tuning!r} is unknown; valid: {', '.join(LLM_TUNINGS)}")
    function = LLM_TUNINGS[tuning]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(function).parameters.values())
    unknown = sorted(set(options) - set(tuning_arguments(tuning)))
    if unknown and not open_ended:
        raise ValueError(f"llm_tuning={tuning!r} takes no option(s) {unknown}; valid: {tuning_arguments(tuning)}")
    function(llm, **options)
    if tuning != "frozen":
        llm.trainable = tuning == "full"  # dropout only when the whole LLM trains
