"""Evaluation metrics that reproduce the reference scripts (coco-caption, VQA, POPE, CHAIR).

Functional versions live in :mod:`perceptlm.metrics.functional`; the classes below are
torchmetrics ``Metric`` s that accumulate over an evaluation loop and synchronise across
processes.
"""

from perceptlm.metrics.classification_metrics import MultipleChoiceAccuracy, YesNoMetrics
from perceptlm.metrics.text_metrics import CaptionMetrics
from perceptlm.metrics.vqa_metrics import VQAAccuracy

__all__ = ["CaptionMetrics", "MultipleChoiceAccuracy", "VQAAccuracy", "YesNoMetrics"]
