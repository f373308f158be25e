"""Metrics of the instruction-tuning tasks (Garg & Bas 2023): multiple choice, yes/no, conversation,
LLaVA-Bench, captions with CHAIR, and mixtures of them, from generated answers, references and the
per-sample ``meta`` the datamodules attach.

* ``mcq``: the letter parsed from the generation (:func:`~perceptlm.metrics.functional.parse_option_letter`,
  among ``meta["num_options"]`` letters) equals the reference letter -> ``accuracy``; ``unparsed``
  is the fraction with no letter. Option-likelihood accuracy: :func:`likelihood_accuracy`.
* ``yesno``: POPE's rules (:func:`~perceptlm.metrics.functional.yes_no_metrics`): accuracy,
  precision, recall, F1, yes-ratio.
* ``conversation``: normalised exact match with any reference (official VQA normalisation) and ROUGE-L.
* ``caption``: CIDEr-D, BLEU-4, ROUGE-L; CHAIR-i/-s when ``meta`` has ``objects`` (the ground-truth
  objects of the image, to which the objects its references mention are added, as CHAIR does), in
  the vocabulary ``meta["vocabulary"]`` (:func:`object_vocabulary`; COCO's by default).
* ``llava_bench``: the LLM judge (:mod:`perceptlm.eval.judge`), ``relative_{category}``.
* ``instruct``: each sample scored by its ``meta["task"]``, keys prefixed by that task.

``meta["group"]`` (a POPE subset, a ScienceQA subject, a NoCaps domain): with two groups or more,
the task's metrics also per group, prefixed by the group name.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

TASKS = ("mcq", "yesno", "conversation", "llava_bench", "instruct")


def _letter_index(letter: str) -> int:
    return ord(letter.strip().upper()[:1] or "?") - ord("A")


def _mcq(predictions: Sequence[str], references: Sequence[list[str]], meta: Sequence[dict[str, Any]]) -> dict[str, float]:
    from perceptlm.metrics.functional import parse_option_letter

    correct = unparsed = 0
    for prediction, refs, info in zip(predictions, references, meta):
        parsed = parse_option_letter(prediction, int(info.get("num_options", 26)))
        unparsed += parsed is None
        correct += parsed is not None and parsed == _letter_index(refs[0])
    return {"accuracy": correct / len(predictions), "unparsed": unparsed / len(predictions)}


def _yesno(predictions: Sequence[str], references: Sequence[list[str]], meta: Sequence[dict[str, Any]]) -> dict[str, float]:
    from perceptlm.metrics.functional import yes_no_metrics

    return yes_no_metrics(list(predictions), [r[0].strip().lower() for r in references])


def _conversation(predictions: Sequence[str], references: Sequence[list[str]], meta: Sequence[dict[str, Any]]) -> dict[str, float]:
    from perceptlm.metrics import functional as M

    hits = [any(M.vqa_normalize_answer(p) == M.vqa_normalize_answer(r) for r in refs)
            for p, refs in zip(predictions, references)]
    return {"accuracy": sum(hits) / len(hits), "rouge_l": float(M.rouge_l(list(predictions), [list(r) for r in references]))}


def object_vocabulary(name: str) -> dict[str, tuple[str, ...]]:
    """CHAIR's object vocabulary ``name`` -> synonyms: ``coco`` (the 80 categories, CHAIR's own list)
    or ``easy-vqa`` (its three shapes; colours are attributes, not objects)."""
    if name == "coco":
        from perceptlm.metrics.coco_objects import coco_synonyms

        return coco_synonyms()
    if name == "easy-vqa":
        from perceptlm.data.easyvqa import SHAPES

        return {shape: (shape, f"{shape}s") for shape in SHAPES}
    raise ValueError(f"unknown object vocabulary {name!r}; valid: 'coco', 'easy-vqa'")


def _caption(predictions: Sequence[str], references: Sequence[list[str]], meta: Sequence[dict[str, Any]]) -> dict[str, float]:
    from perceptlm.metrics.functional import chair, extract_objects
    from perceptlm.modules.evaluation import score

    metrics = score("caption", list(predictions), [list(r) for r in references])
    with_objects = [k for k, info in enumerate(meta) if "objects" in info]
    if with_objects:
        vocabularies = {meta[k].get("vocabulary", "coco") for k in with_objects}
        if len(vocabularies) > 1:
            raise ValueError(f"captions scored together use one object vocabulary; got {sorted(vocabularies)}")
        synonyms = object_vocabulary(vocabularies.pop())
        truth = [set(meta[k]["objects"]) | {o for ref in references[k] for o in extract_objects(ref, synonyms)}
                 for k in with_objects]
        result = chair([predictions[k] for k in with_objects], truth, synonyms)
        metrics.update(chair_i=result["chair_i"], chair_s=result["chair_s"])
    return metrics


def llava_bench_items(predictions: Sequence[str], references: Sequence[list[str]],
                      meta: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Judge items from LLaVA-Bench records, and the judge settings the datamodule attached."""
    items = [{"category": info["category"], "question": info["question"], "context": info["context"],
              "layout": info.get("layout", "in-the-wild"), "reference": refs[0], "prediction": prediction}
             for prediction, refs, info in zip(predictions, references, meta)]
    settings = next((dict(info["judge"]) for info in meta if info.get("judge")), {})
    return items, settings


def _llava_bench(predictions: Sequence[str], references: Sequence[list[str]], meta: Sequence[dict[str, Any]]) -> dict[str, float]:
    from perceptlm.eval.judge import Judge, JudgeConfig, score_llava_bench

    items, settings = llava_bench_items(predictions, references, meta)
    results = score_llava_bench(items, Judge(JudgeConfig(**settings)))
    metrics = {}
    for category, result in results.items():
        if result is not None:  # not scored: reported by its absence, never as 0
            metrics.update({f"relative_{category}": result["relative"], f"model_{category}": result["model"],
                            f"reference_{category}": result["reference"]})
    return metrics


SCORERS = {"mcq": _mcq, "yesno": _yesno, "conversation": _conversation, "caption": _caption, "llava_bench": _llava_bench}


def score_instruction(task: str, predictions: Sequence[str], references: Sequence[list[str]],
                      meta: Sequence[dict[str, Any] | None] | None = None) -> dict[str, float]:
    """Metrics of ``task`` (one of :data:`TASKS` or ``caption``); see the module docstring."""
    meta = [dict(m or {}) for m in meta] if meta is not None else [{} for _ in predictions]
    if len(meta) != len(predictions) or len(references) != len(predictions):
        raise ValueError("predictions, references and meta must have the same length")
    if not predictions:
        return {}
    if task == "instruct":
        by_task: dict[str, list[int]] = defaultdict(list)
        for k, info in enumerate(meta):
            if "task" not in info:
                raise ValueError(f"sample {k} has no meta['task']; the 'instruct' mixture scores each sample by its task")
            by_task[info["task"]].append(k)
        metrics = {}
        for name, indices in sorted(by_task.items()):
            part = score_instruction(name, [predictions[k] for k in indices], [references[k] for k in indices],
                                     [meta[k] for k in indices])
            metrics.update({f"{name}_{key}": value for key, value in part.items()})
        return metrics
    if task not in SCORERS:
        raise ValueError(f"no instruction metrics for task {task!r}; valid: {[*TASKS, 'caption']}")
    metrics = SCORERS[task](predictions, references, meta)
    groups: dict[str, list[int]] = defaultdict(list)
    for k, info in enumerate(meta):
        if "group" in info:
            groups[str(info["group"])].append(k)
    if task != "llava_bench" and len(groups) > 1:
        for group, indices in sorted(groups.items()):
            part = SCORERS[task]([predictions[k] for k in indices], [references[k] for k in indices],
                                 [meta[k] for k in indices])
            metrics.update({f"{group}_{key}": value for key, value in part.items()})
    return metrics


def likelihood_accuracy(records: Sequence[dict[str, Any]], key: str = "likelihood_choice") -> float | None:
    """Option-likelihood accuracy over evaluation records that carry a choice under ``key``
    (:func:`perceptlm.eval.likelihood.option_loglikelihood_choice`; ``blind_likelihood_choice`` for
    the blind baseline) and ``meta["answer_index"]``."""
    scored = [r for r in records if r.get(key) is not None]
    if not scored:
        return None
    return sum(int(r[key]) == int(r["meta"]["answer_index"]) for r in scored) / len(scored)
