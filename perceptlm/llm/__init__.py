from perceptlm.llm.adapters import ADAPTERS, ArchitectureAdapter, adapter_for
from perceptlm.llm.language_model import LanguageModel, positions_from_mask

__all__ = ["ADAPTERS", "ArchitectureAdapter", "LanguageModel", "adapter_for", "positions_from_mask"]
