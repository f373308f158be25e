"""``Batch``: what a collator hands the model, one typed record instead of a dict of strings.

Training batches carry right-padded ``prompt + target + EOS`` (``input_ids``, ``attention_mask``,
``labels`` with -100 outside the target and EOS); evaluation batches carry left-padded prompts
(``prompt_ids``, ``prompt_mask``, for batched generation) and the ``references``. Lightning moves a
dataclass batch to the device field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Batch:
    """One collated batch.

    ``media``: the stacked media (a tensor, a dict of tensors for audio front-ends, or cached
    :class:`~perceptlm.encoders.base.PerceptualFeatures`); None when every sample was skipped.
    ``skipped``: ``(sample id, reason)`` of samples whose media failed to load (counted, not trained).
    ``media_position``: per row, the text-token index (in ``input_ids``, or in the left-padded
    ``prompt_ids``) before which the perception goes (LLaVA's ``<image>`` placeholder); None puts
    it before all text.
    ``meta``: per-sample scoring facts the evaluation passes to the task's scoring (instruction task
    family, multiple-choice answer, CHAIR objects, NoCaps domain, ...); None when the samples have none.
    ``option_ids``: per sample, each answer option's token ids (multiple choice by likelihood).
    """

    ids: list[str]
    task: str
    media: Any
    prompts: list[str]
    sources: list[str | None]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    input_ids: Tensor | None = None
    attention_mask: Tensor | None = None
    labels: Tensor | None = None
    prompt_ids: Tensor | None = None
    prompt_mask: Tensor | None = None
    references: list[list[str]] | None = None
    media_position: Tensor | None = None
    meta: list[dict[str, Any]] | None = None
    option_ids: list[list[list[int]]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def instruction_mask(self) -> Tensor:
        """``[B, T]`` over ``input_ids``: the unsupervised text (the instruction), which
        instruction-aware connectors read."""
        if self.input_ids is None or self.attention_mask is None or self.labels is None:
            raise ValueError("instruction_mask needs a training batch (input_ids, attention_mask, labels)")
        return self.attention_mask.bool() & (self.labels == -100)
