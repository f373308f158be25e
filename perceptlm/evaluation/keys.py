"""The metric keys of ``results.json``: which keys each task's scorer produces and how the blind
baseline, instruction mixtures, groups and LLaVA-Bench categories name theirs. The scorers write
these names and the report reads them.

* A task's own keys: :data:`VQA`, :data:`CAPTION` (+ :data:`CHAIR` when samples list their objects),
  :data:`MCQ`, :data:`YESNO` (POPE's), :data:`CONVERSATION`; LLaVA-Bench: :func:`judged` of
  :data:`JUDGED` and each category.
* ``instruct`` mixtures and groups (a POPE subset, a ScienceQA subject): :func:`prefixed`, e.g.
  ``mcq_accuracy``, ``adversarial_f1``.
* The blind baseline (perception zeroed): :func:`blind`, e.g. ``blind_accuracy``.
* The mismatched-media baseline (each sample with another sample's media): :func:`mismatched`, e.g.
  ``mismatched_accuracy``, and ``mismatched_num_samples``.
* Multiple choice by option likelihood: :data:`LIKELIHOOD_ACCURACY` (and its blind twin), from the
  records' :data:`LIKELIHOOD_CHOICE` / :data:`BLIND_LIKELIHOOD_CHOICE`.
"""

from __future__ import annotations

ACCURACY = "accuracy"
UNPARSED = "unparsed"
CIDER = "cider"
BLEU4 = "bleu4"
ROUGE_L = "rouge_l"
CHAIR_I = "chair_i"
CHAIR_S = "chair_s"
F1 = "f1"
YES_RATIO = "yes_ratio"
SPIDER = "spider"  # SPIDEr, DePALM's AudioCaps metric: read by the report when a run's results hold it
NUM_SAMPLES = "num_samples"

VQA = (ACCURACY,)
CAPTION = (CIDER, BLEU4, ROUGE_L)
CHAIR = (CHAIR_I, CHAIR_S)
MCQ = (ACCURACY, UNPARSED)
YESNO = (ACCURACY, "precision", "recall", F1, YES_RATIO)  # POPE's, as metrics.functional.yes_no_metrics names them
CONVERSATION = (ACCURACY, ROUGE_L)
JUDGED = ("relative", "model", "reference")  # LLaVA-Bench, per category: judged(kind, category)

BLIND = "blind_"
MISMATCHED = "mismatched_"
LIKELIHOOD_ACCURACY = "accuracy_likelihood"
LIKELIHOOD_CHOICE = "likelihood_choice"  # an evaluation record's chosen option index
BLIND_LIKELIHOOD_CHOICE = BLIND + LIKELIHOOD_CHOICE

# The headline metric of a run, in order of preference; all three are printed x 100 in tables.
HEADLINE = (CIDER, ACCURACY, SPIDER)


def blind(key: str) -> str:
    """The blind baseline's twin of ``key`` (perception zeroed)."""
    return BLIND + key


def mismatched(key: str) -> str:
    """The mismatched-media baseline's twin of ``key`` (each sample paired with another sample's media)."""
    return MISMATCHED + key


def prefixed(prefix: str, key: str) -> str:
    """``key`` of one task of an ``instruct`` mixture or of one group: ``{prefix}_{key}``."""
    return f"{prefix}_{key}"


def judged(kind: str, category: str) -> str:
    """A LLaVA-Bench key: ``kind`` (one of :data:`JUDGED`) of ``category`` (conv, detail, complex, all)."""
    return f"{kind}_{category}"
