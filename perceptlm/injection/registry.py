"""Injection registry: a preset's ``injection`` names a class here, its ``injection_options`` are
that class's arguments. A new injection adds one line to :data:`INJECTIONS`."""

from __future__ import annotations

import inspect
from typing import Any

from perceptlm.injection.base import Injection
from perceptlm.injection.cross_attention import CrossAttentionInjection
from perceptlm.injection.inner import InnerInjection
from perceptlm.injection.prefix import PrefixInjection
from perceptlm.injection.shared_cross_attention import SharedCrossAttentionInjection

INJECTIONS: dict[str, type[Injection]] = {
    "prefix": PrefixInjection,  # DePALM §3.3 L0: tokens before the text at the LLM input
    "cross_attention": CrossAttentionInjection,  # Flamingo: a gated cross-attention dense block per target layer
    "shared_cross_attention": SharedCrossAttentionInjection,  # DePALM §3.3 c-attn: one block shared by the layers
    "inner": InnerInjection,  # DePALM §3.3 inner, eP-ALM, LLaMA-Adapter: keys/values inside upper layers
}


def injection_arguments(name: str) -> list[str]:
    """The options injection ``name`` takes."""
    parameters = inspect.signature(INJECTIONS[name].__init__).parameters.values()
    return [p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def resolve_injection(name: str, options: dict[str, Any] | None = None) -> tuple[type[Injection], dict[str, Any]]:
    """The class and options that ``name`` and ``options`` name; errors name the valid choices."""
    if name not in INJECTIONS:
        raise ValueError(f"unknown injection {name!r}; valid: {sorted(INJECTIONS)}")
    options = dict(options or {})
    valid = injection_arguments(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"injection {name!r} takes no option(s) {unknown}; valid: {valid}")
    return INJECTIONS[name], options


def build_injection(name: str, **options: Any) -> Injection:
    """``INJECTIONS[name](**options)``; errors name the valid injections and options."""
    cls, options = resolve_injection(name, options)
    return cls(**options)
