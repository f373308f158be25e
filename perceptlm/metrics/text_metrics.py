"""Captioning metrics accumulated over an evaluation loop (coco-caption scores)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch

from perceptlm.metrics._object_state import ObjectStateMetric, plain_id
from perceptlm.metrics.functional.captioning import bleu, cider, meteor, rouge_l, tokenize_captions

__all__ = ["CaptionMetrics"]


class CaptionMetrics(ObjectStateMetric):
    """BLEU-1..4, ROUGE-L, CIDEr-D (and optionally METEOR) as coco-caption computes them.

    Predictions and references are kept as Python lists and gathered across processes with
    ``all_gather_object``.  Pass ``sample_ids`` (e.g. COCO image ids) to count every sample once
    even when a distributed sampler repeats some; records are then scored in id order.

    ``compute()`` returns float64 scalars on coco-caption's raw scale under the keys
    ``bleu_1`` .. ``bleu_4``, ``rouge_l``, ``cider`` (papers report all of them x100, e.g.
    CIDEr 1.17 is "117.0") and ``meteor`` when requested and Java + pycocoevalcap are available
    (the key is absent otherwise); all values are ``nan`` before any update.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, tokenize: bool = True, with_meteor: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokenize = tokenize
        self.with_meteor = with_meteor
        self.add_object_state("sample_ids")
        self.add_object_state("predictions")
        self.add_object_state("references")

    def update(self, predictions: Sequence[str], references: Sequence[Sequence[str]],
               sample_ids: Sequence[Hashable] | None = None) -> None:
        """Add generated captions, each with its list of reference captions."""
        if isinstance(predictions, str) or len(predictions) != len(references):
            raise ValueError("predictions must be a sequence of strings with one references list each")
        if sample_ids is None:
            sample_ids = [None] * len(predictions)
        elif len(sample_ids) != len(predictions):
            raise ValueError("sample_ids must have one id per prediction")
        for refs in references:
            if isinstance(refs, str) or len(refs) == 0:
                raise ValueError("every prediction needs a non-empty list of reference strings")
        self.sample_ids.extend(plain_id(i) for i in sample_ids)
        self.predictions.extend(str(p) for p in predictions)
        self.references.extend([str(r) for r in refs] for refs in references)

    def compute(self) -> dict[str, torch.Tensor]:
        self.warn_if_unkeyed_in_ddp(None in self.sample_ids)
        _, preds, refs = self.deduplicate(self.sample_ids, self.predictions, self.references)
        if not preds:
            keys = [f"bleu_{k}" for k in range(1, 5)] + ["rouge_l", "cider"]
            return {k: torch.tensor(float("nan"), dtype=torch.float64) for k in keys}
        if self.tokenize:
            preds, refs = tokenize_captions(preds, refs)
        scores = {f"bleu_{k + 1}": s for k, s in enumerate(bleu(preds, refs, tokenize=False))}
        scores["rouge_l"] = rouge_l(preds, refs, tokenize=False)
        scores["cider"] = cider(preds, refs, tokenize=False)
        if self.with_meteor:
            value = meteor(preds, refs, tokenize=False)
            if value is not None:
                scores["meteor"] = value
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in scores.items()}
