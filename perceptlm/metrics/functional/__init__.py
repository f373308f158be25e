"""Functional metrics that reproduce the reference evaluation scripts.

``text`` (coco-caption PTB tokenization), ``captioning`` (CIDEr-D, BLEU, ROUGE-L, METEOR),
``vqa`` (official VQA accuracy), ``classification`` (multiple choice, POPE yes/no) and
``hallucination`` (CHAIR).
"""

from perceptlm.metrics.functional.captioning import (
    bleu,
    cider,
    cider_scores,
    meteor,
    rouge_l,
    rouge_l_scores,
    tokenize_captions,
)
from perceptlm.metrics.functional.classification import (
    mcq_accuracy_from_letters,
    mcq_accuracy_from_likelihood,
    parse_option_letter,
    pope_answer_is_yes,
    yes_no_metrics,
    yes_no_metrics_from_counts,
)
from perceptlm.metrics.functional.hallucination import chair, extract_objects
from perceptlm.metrics.functional.text import PUNCTUATIONS, ptb_tokenize, ptb_tokenize_batch
from perceptlm.metrics.functional.vqa import (
    vqa_accuracy,
    vqa_normalize_answer,
    vqa_process_digit_article,
    vqa_process_punctuation,
)

__all__ = [
    "PUNCTUATIONS",
    "bleu",
    "chair",
    "cider",
    "cider_scores",
    "extract_objects",
    "mcq_accuracy_from_letters",
    "mcq_accuracy_from_likelihood",
    "meteor",
    "parse_option_letter",
    "pope_answer_is_yes",
    "ptb_tokenize",
    "ptb_tokenize_batch",
    "rouge_l",
    "rouge_l_scores",
    "tokenize_captions",
    "vqa_accuracy",
    "vqa_normalize_answer",
    "vqa_process_digit_article",
    "vqa_process_punctuation",
    "yes_no_metrics",
    "yes_no_metrics_from_counts",
]
