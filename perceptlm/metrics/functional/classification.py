"""Multiple-choice accuracy and POPE-style yes/no metrics."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

__all__ = [
    "mcq_accuracy_from_letters",
    "mcq_accuracy_from_likelihood",
    "parse_option_letter",
    "pope_answer_is_yes",
    "yes_no_metrics",
    "yes_no_metrics_from_counts",
]


def mcq_accuracy_from_likelihood(option_logprobs: Sequence[Sequence[float]], targets: Sequence[int]) -> float:
    """Fraction of questions whose highest-scoring option (first one on ties) is the target."""
    if len(option_logprobs) != len(targets):
        raise ValueError("option_logprobs and targets must have the same length")
    if not targets:
        return float("nan")
    correct = 0
    for scores, target in zip(option_logprobs, targets):
        if len(scores) == 0:
            raise ValueError("every question needs at least one option score")
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))
        correct += int(best == int(target))
    return correct / len(targets)


def _letters(num_options: int) -> str:
    if not 1 <= num_options <= 26:
        raise ValueError("num_options must be between 1 and 26")
    return string.ascii_uppercase[:num_options]


def parse_option_letter(text: str, num_options: int) -> int | None:
    """Index of the option letter a generation names (0 for "A"), or ``None`` if none is found.

    Tried in order, keeping only letters among the first ``num_options``:

    1. the whole answer is one letter, possibly wrapped or punctuated: ``"B"``, ``"(b)"``, ``"B."``;
    2. an explicit statement: ``"The answer is B"``, ``"Answer: (C)"``, ``"option d)"``
       (a lower-case letter only when followed by ``)``, ``.``, ``:``, ``,`` or the end, so that
       "the answer is a cat" is not read as "A");
    3. a leading label: ``"b) cat"``, ``"(B) cat"``, ``"B. cat"``, ``"B: cat"``;
    4. a parenthesised capital anywhere: ``"I think (C) is right"``;
    5. a capital standing alone at the very end: ``"... so it is C."``.
    """
    letters = _letters(num_options)
    low = letters.lower()
    s = text.strip()
    patterns = [
        rf"^[\s(\[{{'\"*]*([{letters}{low}])[\s)\]}}'\".:,!*]*$",
        rf"(?i:\b(?:answer|option|choice)\b)(?:\s+(?:is|would\s+be|should\s+be))?\s*[:=\-]?\s*"
        rf"(?:(?i:option|choice)\s+)?[(\[]?(?:([{letters}])(?![\w'’])|([{low}])(?=[).:,\]]|$))",
        rf"^[(\[]?([{letters}{low}])[)\].:](?:\s|$)",
        rf"[(\[]([{letters}])[)\]]",
        rf"(?<![\w'’])([{letters}])[.)!]?$",
    ]
    for pattern in patterns:
        m = re.search(pattern, s)
        if m is not None:
            letter = next(g for g in m.groups() if g is not None)
            return letters.index(letter.upper())
    return None


def mcq_accuracy_from_letters(generations: Sequence[str], targets: Sequence[int], num_options: int) -> float:
    """Fraction of generations whose parsed option letter is the target; unparsable ones count as wrong."""
    if len(generations) != len(targets):
        raise ValueError("generations and targets must have the same length")
    if not targets:
        return float("nan")
    correct = sum(parse_option_letter(g, num_options) == int(t) for g, t in zip(generations, targets))
    return correct / len(targets)


def pope_answer_is_yes(text: str) -> bool:
    """POPE's reading of a free-form answer (POPE evaluate.py): keep the text before the first
    ".", drop commas, split on spaces; the answer is "no" if a word is exactly "No", "no" or
    "not", otherwise "yes"."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return not ("No" in words or "not" in words or "no" in words)


def yes_no_metrics_from_counts(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """POPE's accuracy, precision, recall, F1 and yes-ratio from confusion counts ("yes" is
    positive); a ratio with a zero denominator is ``nan`` (the reference script raises)."""

    def div(a: float, b: float) -> float:
        return a / b if b else float("nan")

    precision = div(float(tp), float(tp + fp))
    recall = div(float(tp), float(tp + fn))
    f1 = div(2 * precision * recall, precision + recall) if not (math.isnan(precision) or math.isnan(recall)) else float("nan")
    total = tp + fp + tn + fn
    return {
        "accuracy": div(tp + tn, total),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": div(tp + fp, total),
    }


def yes_no_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE evaluation (evaluate.py of POPE): answers parsed by :func:`pope_answer_is_yes`,
    a label is negative iff it equals ``"no"``."""
    if len(predictions) != len(labels):
        raise ValueError("predictions and labels must have the same length")
    tp = fp = tn = fn = 0
    for pred, label in zip(predictions, labels):
        yes, positive = pope_answer_is_yes(pred), label != "no"
        tp += yes and positive
        fp += yes and not positive
        tn += not yes and not positive
        fn += not yes and positive
    return yes_no_metrics_from_counts(tp, fp, tn, fn)
