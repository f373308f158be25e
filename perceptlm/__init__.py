"""perceptlm: give frozen LLMs perception through small trained interfaces, and compare them."""

from perceptlm import presets, zoo
from perceptlm.modules.interface import InterfaceModule

__all__ = ["InterfaceModule", "presets", "zoo"]
__version__ = "0.1.0"
