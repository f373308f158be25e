from perceptlm.losses.contrastive import ImageTextContrastive

__all__ = ["ImageTextContrastive"]
