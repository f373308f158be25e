from perceptlm.modules import presets
from perceptlm.modules.interface import InterfaceModule

__all__ = ["InterfaceModule", "presets"]
