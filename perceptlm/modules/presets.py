"""The papers' systems as data: feature selection, mapper, injection and LLM tuning.

A preset is a :class:`Preset` value, not a subclass; :func:`build` turns it (plus overrides) into an
:class:`~perceptlm.modules.interface.InterfaceModule`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Preset:
    """One mechanism along DePALM's four axes.

    ``features``: encoder selection (``layers``, ``tokens``, ``final_norm``).
    ``connector``: :class:`~perceptlm.connectors.MappingConnector` arguments.
    ``injection``: name in :data:`perceptlm.injection.INJECTIONS`.
    ``prompt_tokens``: learned input prompt tokens (DePALM §3.4).
    ``trainable_formula``: the trainable-parameter count in terms of the feature width ``D``, the
    mapper width ``W``, the LLM width ``H``, queries ``Q`` and mapper layers ``n``.
    """

    name: str
    paper: str
    features: dict[str, Any] = field(default_factory=dict)
    connector: dict[str, Any] = field(default_factory=dict)
    injection: str = "prefix"
    prompt_tokens: int = 0
    trainable_formula: str = ""

    def with_overrides(self, **overrides: Any) -> "Preset":
        """Merge dict-valued overrides (``features``, ``connector``) and replace the rest."""
        valid = {f for f in asdict(self) if f not in ("name", "paper", "trainable_formula")}
        unknown = set(overrides) - valid
        if unknown:
            raise ValueError(f"unknown preset override(s) {sorted(unknown)}; valid: {sorted(valid)}")
        merged: dict[str, Any] = {}
        for key, value in overrides.items():
            if value is None:
                continue
            current = getattr(self, key)
            merged[key] = {**current, **value} if isinstance(current, dict) else value
        return replace(self, **merged)


_QP_FORMULA = (
    "D*W+W (input Linear) + Q*W (queries) + n*(4*W*W+4*W + 2*W*W+3*W + 4*W) (post-norm layers, "
    "FFN width W) + W*H+H (output Linear) + P*H (prompt tokens)"
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="depalm-qp-l0",
            paper="DePALM (Vallaeys et al. 2024) §3, 'QP, L0': QPMapper summary tokens at the LLM input",
            features={"layers": 1, "tokens": "all"},
            connector={"transformer": "qpmapper", "num_queries": 32, "num_layers": 2, "width": None},
            injection="prefix",
            prompt_tokens=1,
            trainable_formula=_QP_FORMULA,
        ),
    ]
}


def names() -> list[str]:
    """The preset names, sorted."""
    return sorted(PRESETS)


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(names())}") from None


def build(name: str, encoder: Any, llm: Any, **overrides: Any):
    """Build the :class:`InterfaceModule` of preset ``name`` on ``encoder`` and ``llm`` (zoo names
    or loaded modules). ``overrides`` are preset fields (dicts merge) or module arguments."""
    from perceptlm.modules.interface import InterfaceModule

    get(name)
    return InterfaceModule(preset=name, encoder=encoder, llm=llm, **overrides)
