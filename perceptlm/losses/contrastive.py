"""BLIP-2's image-text contrastive objective (ITC; Li et al. 2023 §3.2) as an auxiliary loss.

BLIP-2 trains its Q-Former in a first, representation stage, before any LLM sees it: ITC aligns each
query output with the caption's embedding, so the queries must carry what tells one image from
another. Trained only through a frozen LLM, a Q-Former learnt from scratch can instead settle on a
nearly constant soft prompt (the easiest way to lower the language-modelling loss of the first
steps) while what varies with the image shrinks. ``PerceptualLM(itc_weight=w)`` (and the ``itc_weight`` run option) adds ``w`` x this
loss to the training loss.

As in BLIP-2: each perceptual token and the text embedding are projected to 256 dimensions and
L2-normalised; an image-text similarity is the highest over the perceptual tokens; the temperature
is learnt (initial 0.07, kept in [0.001, 0.5]); the loss is the mean of the image-to-text and
text-to-image cross-entropies over the batch with label smoothing 0.1. Different here: the text
embedding is the mean of the frozen LLM's input embeddings over the answer tokens (BLIP-2 uses its
Q-Former's own BERT text branch, for which no weights come with this toolkit), and the negatives are
the other samples of the process's batch (BLIP-2 gathers them across GPUs). Samples with the same
answer get the same text embedding, so the loss cannot tell their pairs apart: a repeated caption is
never pushed away from its own images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ImageTextContrastive(nn.Module):
    """ITC head: ``forward(visual [B, K, H], text [B, H])`` -> the loss (a scalar)."""

    def __init__(self, width: int, dim: int = 256, temperature: float = 0.07, label_smoothing: float = 0.1) -> None:
        super().__init__()
        if not 0.001 <= temperature <= 0.5:
            raise ValueError(f"temperature must lie in [0.001, 0.5], got {temperature}")
        self.image = nn.Linear(width, dim)
        self.text = nn.Linear(width, dim)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.label_smoothing = label_smoothing

    def similarity(self, visual: Tensor, text: Tensor) -> Tensor:
        """``[B_image, B_text]``: per pair, the highest cosine over the image's tokens, over the temperature."""
        image = F.normalize(self.image(visual.float()), dim=-1)
        words = F.normalize(self.text(text.float()), dim=-1)
        return torch.einsum("ikd,jd->ijk", image, words).amax(-1) / self.temperature.clamp(0.001, 0.5)

    def forward(self, visual: Tensor, text: Tensor) -> Tensor:
        """The mean of the image-to-text and text-to-image cross-entropies, each sample's own pair the target."""
        if visual.dim() != 3 or text.dim() != 2 or len(visual) != len(text):
            raise ValueError(f"ITC expects visual [B, K, H] and text [B, H]; got {tuple(visual.shape)}, {tuple(text.shape)}")
        logits = self.similarity(visual, text)
        target = torch.arange(len(text), device=logits.device)
        return (F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
                + F.cross_entropy(logits.t(), target, label_smoothing=self.label_smoothing)) / 2
