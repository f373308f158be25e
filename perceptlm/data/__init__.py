from perceptlm.data.base import MediaDataset, PerceptionDataModule, UnpaddedDistributedSampler, subset_indices
from perceptlm.data.collate import DEFAULT_TEMPLATES, Collator, Sample
from perceptlm.data.easyvqa import EasyVQADataModule

__all__ = ["DEFAULT_TEMPLATES", "Collator", "EasyVQADataModule", "MediaDataset", "PerceptionDataModule",
           "Sample", "UnpaddedDistributedSampler", "subset_indices"]
