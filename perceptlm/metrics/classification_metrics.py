"""Multiple-choice accuracy and POPE yes/no metrics accumulated over an evaluation loop."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch

from perceptlm.metrics._object_state import ObjectStateMetric, plain_id
from perceptlm.metrics.functional.classification import (
    parse_option_letter,
    pope_answer_is_yes,
    yes_no_metrics_from_counts,
)

__all__ = ["MultipleChoiceAccuracy", "YesNoMetrics"]


class _CountingMetric(ObjectStateMetric):
    """Per-sample integer outcomes: summed in tensor states, or kept per id when ids are given."""

    is_differentiable = False
    full_state_update = False
    _fields: tuple[str, ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in self._fields:
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_object_state("sample_ids")
        self.add_object_state("id_outcomes")

    def _record(self, outcomes: list[tuple[int, ...]], sample_ids: Sequence[Hashable] | None) -> None:
        if sample_ids is None:
            for k, name in enumerate(self._fields):
                setattr(self, name, getattr(self, name) + sum(o[k] for o in outcomes))
            return
        if len(sample_ids) != len(outcomes):
            raise ValueError("sample_ids must have one id per prediction")
        self.sample_ids.extend(plain_id(i) for i in sample_ids)
        self.id_outcomes.extend(outcomes)

    def _totals(self) -> list[int]:
        self.warn_if_unkeyed_in_ddp(any(getattr(self, name).item() for name in self._fields))
        _, outcomes = self.deduplicate(self.sample_ids, self.id_outcomes)
        return [int(getattr(self, name).item()) + sum(o[k] for o in outcomes) for k, name in enumerate(self._fields)]


class MultipleChoiceAccuracy(_CountingMetric):
    """Fraction of correctly answered multiple-choice questions.

    ``update`` takes either option scores (a ``[batch, options]`` tensor or one sequence of
    scores per question, e.g. summed log-likelihoods; the first maximum wins) or generated
    strings, parsed with :func:`~perceptlm.metrics.functional.parse_option_letter` (needs
    ``num_options``; unparsable answers count as wrong).
    """

    higher_is_better = True
    _fields = ("correct", "total")

    def __init__(self, num_options: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_options = num_options

    def update(self, predictions: torch.Tensor | Sequence[Sequence[float]] | Sequence[str],
               targets: torch.Tensor | Sequence[int], sample_ids: Sequence[Hashable] | None = None) -> None:
        targets = [int(t) for t in targets]
        if len(predictions) != len(targets):
            raise ValueError("predictions and targets must have the same length")
        if len(predictions) and isinstance(predictions[0], str):
            if self.num_options is None:
                raise ValueError("parsing generated letters needs num_options")
            chosen = [parse_option_letter(p, self.num_options) for p in predictions]
        else:
            chosen = []
            for scores in predictions:
                values = scores.tolist() if isinstance(scores, torch.Tensor) else list(scores)
                chosen.append(max(range(len(values)), key=lambda k: (values[k], -k)))
        self._record([(int(c == t), 1) for c, t in zip(chosen, targets)], sample_ids)

    def compute(self) -> torch.Tensor:
        correct, total = self._totals()
        return torch.tensor(correct / total if total else float("nan"), dtype=torch.float64)


class YesNoMetrics(_CountingMetric):
    """POPE metrics: accuracy, precision, recall, F1 and yes-ratio ("yes" is the positive class).

    Free-form answers are read as POPE's evaluate.py does (first sentence, "No"/"no"/"not" as a
    word means no); a label is negative iff it is exactly ``"no"``.
    """

    higher_is_better = True
    _fields = ("tp", "fp", "tn", "fn")

    def update(self, predictions: Sequence[str], labels: Sequence[str],
               sample_ids: Sequence[Hashable] | None = None) -> None:
        if len(predictions) != len(labels):
            raise ValueError("predictions and labels must have the same length")
        outcomes = []
        for pred, label in zip(predictions, labels):
            yes, positive = pope_answer_is_yes(pred), label != "no"
            outcomes.append((int(yes and positive), int(yes and not positive),
                             int(not yes and not positive), int(not yes and positive)))
        self._record(outcomes, sample_ids)

    def compute(self) -> dict[str, torch.Tensor]:
        values = yes_no_metrics_from_counts(*self._totals())
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}
