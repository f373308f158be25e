"""Connector registry and factory: a preset's ``connector`` dict names its ``type`` (default
``"mapping"``); the remaining keys are that connector's arguments."""

from __future__ import annotations

import inspect
from typing import Any

from perceptlm.connectors.clipcap import ClipCapConnector
from perceptlm.connectors.mapping import Connector, MappingConnector
from perceptlm.connectors.qformer import QFormerConnector
from perceptlm.connectors.resampler import TokenResampler

CONNECTORS: dict[str, type[Connector]] = {
    "mapping": MappingConnector,
    "resampler": TokenResampler,
    "qformer": QFormerConnector,
    "clipcap": ClipCapConnector,
}


def build_connector(in_dim: int, out_dim: int, spec: dict[str, Any] | None = None) -> Connector:
    """``CONNECTORS[spec["type"]](in_dim, out_dim, **rest)``; errors name the valid types/arguments."""
    spec = dict(spec or {})
    kind = spec.pop("type", "mapping")
    if kind not in CONNECTORS:
        raise ValueError(f"unknown connector type {kind!r}; valid: {sorted(CONNECTORS)}")
    cls = CONNECTORS[kind]
    valid = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "in_dim", "out_dim")]
    unknown = sorted(set(spec) - set(valid))
    if unknown:
        raise ValueError(f"connector type {kind!r} takes no argument(s) {unknown}; valid: ['type'] + {valid}")
    return cls(in_dim, out_dim, **spec)
