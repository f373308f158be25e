from perceptlm.encoders.base import TOKEN_SELECTIONS, PerceptualEncoder, PerceptualFeatures, resolve_layers

__all__ = ["TOKEN_SELECTIONS", "PerceptualEncoder", "PerceptualFeatures", "resolve_layers"]
