from perceptlm.training.module import MODEL_ARGUMENTS, InterfaceModule

__all__ = ["MODEL_ARGUMENTS", "InterfaceModule"]
