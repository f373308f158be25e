from perceptlm.tuning.llm_tuning import LLM_TUNINGS, apply_llm_tuning, tuning_arguments
from perceptlm.tuning.prompt import PromptTokens

__all__ = ["LLM_TUNINGS", "PromptTokens", "apply_llm_tuning", "tuning_arguments"]
