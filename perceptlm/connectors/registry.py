"""Connector registry: a preset's ``connector`` dict names its ``type`` (default ``"mapping"``); the
remaining keys are that connector's arguments. A new connector adds one line to :data:`CONNECTORS`."""

from __future__ import annotations

import inspect
from typing import Any

from perceptlm.connectors.base import Connector
from perceptlm.connectors.clipcap import ClipCapConnector
from perceptlm.connectors.mapping import MappingConnector
from perceptlm.connectors.qformer import QFormerConnector
from perceptlm.connectors.resampler import TokenResampler

CONNECTORS: dict[str, type[Connector]] = {
    "mapping": MappingConnector,  # DePALM §3.2 unified mapper: Linear, QPMapper / encoder layers, MLP
    "resampler": TokenResampler,  # DePALM §3.2 token resamplers R-avgpool / R-linear / R-QPMapper / R-rand
    "qformer": QFormerConnector,  # BLIP-2 §3.1 Q-Former (InstructBLIP, MiniGPT-4, mPLUG-Owl, Flamingo)
    "clipcap": ClipCapConnector,  # ClipCap §3 mapping network
}


def connector_arguments(kind: str) -> list[str]:
    """The arguments connector type ``kind`` takes besides ``in_dim`` and ``out_dim``."""
    parameters = inspect.signature(CONNECTORS[kind].__init__).parameters.values()
    return [p.name for p in parameters
            if p.name not in ("self", "in_dim", "out_dim") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def resolve_connector(spec: dict[str, Any] | None) -> tuple[type[Connector], dict[str, Any]]:
    """The class and arguments that ``spec`` names; errors name the valid types / arguments."""
    spec = dict(spec or {})
    kind = spec.pop("type", "mapping")
    if kind not in CONNECTORS:
        raise ValueError(f"unknown connector type {kind!r}; valid: {sorted(CONNECTORS)}")
    valid = connector_arguments(kind)
    unknown = sorted(set(spec) - set(valid))
    if unknown:
        raise ValueError(f"connector type {kind!r} takes no argument(s) {unknown}; valid: ['type'] + {valid}")
    return CONNECTORS[kind], spec


def build_connector(in_dim: int, out_dim: int, spec: dict[str, Any] | None = None) -> Connector:
    """``CONNECTORS[spec["type"]](in_dim, out_dim, **rest)``; errors name the valid types/arguments."""
    cls, arguments = resolve_connector(spec)
    return cls(in_dim, out_dim, **arguments)
