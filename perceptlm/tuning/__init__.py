from perceptlm.tuning.prompt import PromptTokens

__all__ = ["PromptTokens"]
