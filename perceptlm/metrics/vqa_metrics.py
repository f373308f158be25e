"""Official VQA accuracy accumulated over an evaluation loop."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch

from perceptlm.metrics._object_state import ObjectStateMetric, plain_id
from perceptlm.metrics.functional.vqa import vqa_accuracy

__all__ = ["VQAAccuracy"]


class VQAAccuracy(ObjectStateMetric):
    """Mean official VQA accuracy (vqaEval.py) in [0, 1]; the VQA leaderboards report x100.

    Without ``sample_ids`` per-question scores are summed in float64 tensor states (synchronised
    by torchmetrics).  With ``sample_ids`` the scores are kept per id and each id counts once
    (first record wins), which removes the samples a distributed sampler repeats.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_object_state("sample_ids")
        self.add_object_state("id_scores")

    def update(self, predictions: Sequence[str], answers: Sequence[Sequence[str]],
               sample_ids: Sequence[Hashable] | None = None) -> None:
        """Add predicted answers, each with its list of human answers (10 in VQA v2)."""
        scores = vqa_accuracy(predictions, answers, reduction="none")
        if sample_ids is None:
            self.score_sum += sum(scores)
            self.count += len(scores)
            return
        if len(sample_ids) != len(scores):
            raise ValueError("sample_ids must have one id per prediction")
        self.sample_ids.extend(plain_id(i) for i in sample_ids)
        self.id_scores.extend(scores)

    def compute(self) -> torch.Tensor:
        self.warn_if_unkeyed_in_ddp(bool(self.count.item()))
        _, scores = self.deduplicate(self.sample_ids, self.id_scores)
        total = self.score_sum.item() + sum(scores)
        count = int(self.count.item()) + len(scores)
        return torch.tensor(total / count if count else float("nan"), dtype=torch.float64)
