"""perceptlm: give frozen LLMs perception through small trained interfaces, and compare them.

``perceptlm.build(preset, encoder, llm, **overrides)`` gives the Lightning module of a mechanism,
``perceptlm.PerceptualLM`` the plain ``nn.Module``; both are imported on first use, so that
``import perceptlm.presets`` (or the model alone) does not load Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["InterfaceModule", "PerceptualLM", "build", "presets", "zoo"]
__version__ = "0.1.0"

_EXPORTS = {"InterfaceModule": "perceptlm.training", "build": "perceptlm.training", "PerceptualLM": "perceptlm.model",
            "presets": "perceptlm.presets", "zoo": "perceptlm.zoo"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'perceptlm' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return module if module.__name__.endswith(f".{name}") else getattr(module, name)
