from perceptlm.modules.interface import InterfaceModule

__all__ = ["InterfaceModule"]
