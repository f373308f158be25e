"""Every task's metrics from generated answers, references and the per-sample ``meta`` the
datamodules attach: :func:`score` is the one entry; :func:`score_records` scores gathered evaluation
records (the blind baseline and option likelihood included). Metric names: :mod:`perceptlm.evaluation.keys`.

* ``vqa``: official VQA accuracy in [0, 1]; normalised exact match with one reference per question;
  ``{type}_accuracy`` per question type when every ``meta`` has ``question_type`` (easy-VQA).
* ``caption`` (no ``meta``): CIDEr-D, BLEU-4, ROUGE-L on coco-caption's scale.

The instruction-tuning tasks (Garg & Bas 2023): multiple choice, yes/no, conversation, LLaVA-Bench,
captions with CHAIR, and mixtures of them:

* ``mcq``: the letter parsed from the generation (:func:`~perceptlm.metrics.functional.parse_option_letter`,
  among ``meta["num_options"]`` letters) equals the reference letter -> ``accuracy``; ``unparsed``
  is the fraction with no letter. Option-likelihood accuracy: :func:`likelihood_accuracy`.
* ``yesno``: POPE's rules (:func:`~perceptlm.metrics.functional.yes_no_metrics`): accuracy,
  precision, recall, F1, yes-ratio.
* ``conversation``: normalised exact match with any reference (official VQA normalisation) and ROUGE-L.
* ``caption``: CIDEr-D, BLEU-4, ROUGE-L; CHAIR-i/-s when ``meta`` has ``objects`` (the ground-truth
  objects of the image, to which the objects its references mention are added, as CHAIR does), in
  the vocabulary ``meta["vocabulary"]`` (:func:`object_vocabulary`; COCO's by default).
* ``llava_bench``: the LLM judge (:mod:`perceptlm.evaluation.judge`), ``relative_{category}``.
* ``instruct``: each sample scored by its ``meta["task"]``, keys prefixed by that task.

``meta["group"]`` (a POPE subset, a ScienceQA subject, a NoCaps domain): with two groups or more,
the task's metrics also per group, prefixed by the group name.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

from perceptlm.evaluation import keys as K
from perceptlm.evaluation.judge import Judge, JudgeConfig, llava_bench_items, score_llava_bench
from perceptlm.metrics import functional as M
from perceptlm.metrics.coco_objects import coco_synonyms

TASKS = ("mcq", "yesno", "conversation", "llava_bench", "instruct")
# easy-VQA's shapes (its colours are attributes, not objects); equal to perceptlm.data.easyvqa.SHAPES
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")


def _letter_index(letter: str) -> int:
    return ord(letter.strip().upper()[:1] or "?") - ord("A")


def _vqa(predictions: Sequence[str], references: Sequence[list[str]]) -> dict[str, float]:
    if all(len(r) == 1 for r in references):
        # One ground-truth answer per question (easy-VQA, GQA-style): the VQA leave-one-out
        # formula needs several annotators, so score normalised exact match instead.
        hits = [M.vqa_normalize_answer(p) == M.vqa_normalize_answer(r[0]) for p, r in zip(predictions, references)]
        return {K.ACCURACY: sum(hits) / len(hits)}
    return {K.ACCURACY: float(M.vqa_accuracy(list(predictions), [list(r) for r in references]))}


def _vqa_by_type(predictions: Sequence[str], references: Sequence[list[str]],
                 meta: Sequence[dict[str, Any] | None] | None) -> dict[str, float]:
    """``{type}_accuracy`` per question type where every sample's ``meta`` names one (``question_type``:
    easy-VQA's shape / color / yesno); nothing otherwise."""
    if not meta or not all(m and "question_type" in m for m in meta):
        return {}
    groups: dict[str, list[int]] = {}
    for index, m in enumerate(meta):
        groups.setdefault(str(m["question_type"]), []).append(index)
    return {K.prefixed(kind, K.ACCURACY): _vqa([predictions[i] for i in indices], [references[i] for i in indices])[K.ACCURACY]
            for kind, indices in sorted(groups.items())}


def _caption_text(predictions: Sequence[str], references: Sequence[list[str]]) -> dict[str, float]:
    predictions, references = list(predictions), [list(r) for r in references]
    bleu = M.bleu(predictions, references)
    return {K.CIDER: float(M.cider(predictions, references)), K.BLEU4: float(bleu[3]),
            K.ROUGE_L: float(M.rouge_l(predictions, references))}


def _mcq(predictions: Sequence[str], references: Sequence[list[str]], meta: Sequence[dict[str, Any]]) -> dict[str, float]:
    correct = unparsed = 0
    for prediction, refs, info in zip(predictions, references, meta):
        parsed = M.parse_option_letter(prediction, int(info.get("num_options", 26)))
        unparsed += parsed is None
        correct += parsed is not None and parsed == _letter_index(refs[0])
    return {K.ACCURACY: correct / len(predictions), K.UNPARSED: unparsed / len(predictions)}


def _yesno(predictions: Sequence[str], references: Sequence[list[str]], meta: Sequence[dict[str, Any]]) -> dict[str, float]:
    return M.yes_no_metrics(list(predictions), [r[0].strip().lower() for r in references])


def _conversation(predictions: Sequence[str], references: Sequence[list[str]], meta: Sequence[dict[str, Any]]) -> dict[str, float]:
    hits = [any(M.vqa_normalize_answer(p) == M.vqa_normalize_answer(r) for r in refs)
            for p, refs in zip(predictions, references)]
    return {K.ACCURACY: sum(hits) / len(hits),
            K.ROUGE_L: float(M.rouge_l(list(predictions), [list(r) for r in references]))}


def object_vocabulary(name: str) -> dict[str, tuple[str, ...]]:
    """CHAIR's object vocabulary ``name`` -> synonyms: ``coco`` (the 80 categories, CHAIR's own list)
    or ``easy-vqa`` (its three shapes; colours are attributes, not objects)."""
    if name == "coco":
        return coco_synonyms()
    if name == "easy-vqa":
        return {shape: (shape, f"{shape}s") for shape in EASY_VQA_SHAPES}
    raise ValueError(f"unknown object vocabulary {name!r}; valid: 'coco', 'easy-vqa'")


def _caption(predictions: Sequence[str], references: Sequence[list[str]], meta: Sequence[dict[str, Any]]) -> dict[str, float]:
    metrics = _caption_text(predictions, references)
    with_objects = [k for k, info in enumerate(meta) if "objects" in info]
    if with_objects:
        vocabularies = {meta[k].get("vocabulary", "coco") for k in with_objects}
        if len(vocabularies) > 1:
            raise ValueError(f"captions scored together use one object vocabulary; got {sorted(vocabularies)}")
        synonyms = object_vocabulary(vocabularies.pop())
        truth = [set(meta[k]["objects"]) | {o for ref in references[k] for o in M.extract_objects(ref, synonyms)}
                 for k in with_objects]
        result = M.chair([predictions[k] for k in with_objects], truth, synonyms)
        metrics.update({K.CHAIR_I: result["chair_i"], K.CHAIR_S: result["chair_s"]})
    return metrics


def _llava_bench(predictions: Sequence[str], references: Sequence[list[str]], meta: Sequence[dict[str, Any]]) -> dict[str, float]:
    items, settings = llava_bench_items(predictions, references, meta)
    results = score_llava_bench(items, Judge(JudgeConfig(**settings)))
    metrics = {}
    for category, result in results.items():
        if result is not None:  # not scored: reported by its absence, never as 0
            metrics.update({K.judged(kind, category): result[kind] for kind in K.JUDGED})
    return metrics


SCORERS = {"mcq": _mcq, "yesno": _yesno, "conversation": _conversation, "caption": _caption, "llava_bench": _llava_bench}


def score(task: str, predictions: Sequence[str], references: Sequence[list[str]],
          meta: Sequence[dict[str, Any] | None] | None = None) -> dict[str, float]:
    """The metrics of ``task`` (``vqa``, ``caption`` or one of :data:`TASKS`) on coco-caption /
    official-VQA scales (VQA accuracy in [0, 1]); see the module docstring. Captions with per-sample
    ``meta`` are scored as an instruction task (CHAIR, groups)."""
    if not predictions:
        return {}
    if task in TASKS or (task == "caption" and meta and any(meta)):
        return _score_instruction(task, predictions, references, meta)
    if task == "vqa":
        return {**_vqa(predictions, references), **_vqa_by_type(predictions, references, meta)}
    if task == "caption":
        return _caption_text(predictions, references)
    raise ValueError(f"no metrics for task {task!r}; valid tasks: 'vqa', 'caption', {', '.join(map(repr, TASKS))}")


def _score_instruction(task: str, predictions: Sequence[str], references: Sequence[list[str]],
                       meta: Sequence[dict[str, Any] | None] | None = None) -> dict[str, float]:
    """Metrics of an instruction task (one of :data:`TASKS` or ``caption``)."""
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
            part = _score_instruction(name, [predictions[k] for k in indices], [references[k] for k in indices],
                                      [meta[k] for k in indices])
            metrics.update({K.prefixed(name, key): value for key, value in part.items()})
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
            metrics.update({K.prefixed(group, key): value for key, value in part.items()})
    return metrics


def likelihood_accuracy(records: Sequence[dict[str, Any]], key: str = K.LIKELIHOOD_CHOICE) -> float | None:
    """Option-likelihood accuracy over evaluation records that carry a choice under ``key``
    (:func:`perceptlm.evaluation.likelihood.option_loglikelihood_choice`; ``blind_likelihood_choice``
    for the blind baseline) and ``meta["answer_index"]``."""
    scored = [r for r in records if r.get(key) is not None]
    if not scored:
        return None
    return sum(int(r[key]) == int(r["meta"]["answer_index"]) for r in scored) / len(scored)


def score_records(task: str, records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The metrics of gathered evaluation records (:func:`perceptlm.evaluation.records.gather_records`):
    the task's on ``prediction``, the blind baseline's (:func:`~perceptlm.evaluation.keys.blind` keys)
    on ``blind_prediction`` when the records have it, the mismatched-media baseline's
    (:func:`~perceptlm.evaluation.keys.mismatched` keys) on the records with a
    ``mismatched_prediction`` (and how many they are), option-likelihood accuracy when they carry
    choices, and ``num_samples``."""
    references = [r["references"] for r in records]
    meta = [r.get("meta") for r in records] if any("meta" in r for r in records) else None
    metrics = score(task, [r["prediction"] for r in records], references, meta)
    if records and "blind_prediction" in records[0]:
        blind = score(task, [r["blind_prediction"] for r in records], references, meta)
        metrics.update({K.blind(k): v for k, v in blind.items()})
    paired = [r for r in records if r.get("mismatched_prediction") is not None]
    if paired:
        paired_meta = [r.get("meta") for r in paired] if meta is not None else None
        scored = score(task, [r["mismatched_prediction"] for r in paired], [r["references"] for r in paired], paired_meta)
        metrics.update({K.mismatched(k): v for k, v in scored.items()})
        metrics[K.mismatched(K.NUM_SAMPLES)] = float(len(paired))
    if (accuracy := likelihood_accuracy(records)) is not None:  # multiple choice by option likelihood
        metrics[K.LIKELIHOOD_ACCURACY] = accuracy
    if (accuracy := likelihood_accuracy(records, K.BLIND_LIKELIHOOD_CHOICE)) is not None:
        metrics[K.blind(K.LIKELIHOOD_ACCURACY)] = accuracy
    metrics[K.NUM_SAMPLES] = float(len(records))
    return metrics
