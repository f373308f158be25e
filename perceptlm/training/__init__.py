from perceptlm.training.module import MODEL_ARGUMENTS, InterfaceModule, build

__all__ = ["MODEL_ARGUMENTS", "InterfaceModule", "build"]
