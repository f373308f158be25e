"""perceptlm: give frozen LLMs perception through small trained interfaces, and compare them."""

from typing import Any

from perceptlm import presets, zoo
from perceptlm.modules.interface import InterfaceModule

__all__ = ["InterfaceModule", "build", "presets", "zoo"]
__version__ = "0.1.0"


def build(name: str, encoder: Any, llm: Any, **overrides: Any) -> InterfaceModule:
    """The :class:`InterfaceModule` of preset ``name`` (:func:`perceptlm.presets.names`) on ``encoder``
    and ``llm`` (zoo names or loaded modules). ``overrides`` are preset fields (dicts merge) or module
    arguments."""
    presets.get(name)  # an unknown name fails here, listing the valid ones
    return InterfaceModule(preset=name, encoder=encoder, llm=llm, **overrides)
