"""LLaVA-Bench (Liu et al. 2023, "Visual Instruction Tuning" §5): conversation, detailed description
and complex reasoning questions, answered by the model and scored by an LLM judge relative to
reference (GPT-4) answers (Garg & Bas 2023: complex reasoning / conversation / detail tasks).

Layouts under ``data_root``:

``in-the-wild`` (default ``$PERCEPTLM_DATA/llava-bench-in-the-wild``; 24 images, 60 questions)::

    questions.jsonl      # {"question_id", "image", "text", "category": conv|detail|complex}
    answers_gpt4.jsonl   # {"question_id", "text", ...}: the reference answers
    context.jsonl        # {"id", "image", "caption"}: what the judge knows of the image
    images/{image}

``coco`` (default ``$PERCEPTLM_DATA/llava-bench-coco``; 30 COCO val2014 images, 90 questions)::

    questions.jsonl      # LLaVA's qa90_questions.jsonl
    answers_gpt4.jsonl   # qa90_gpt4_answer.jsonl
    context.jsonl        # caps_boxes_coco2014_val_80.jsonl: {"image", "captions": [...], "instances": [{"category", "bbox"}]}
    val2014/{image}

Evaluation only; the judge is configured by ``judge`` (``base_url``, ``model``, ``cache_dir``,
``timeout``, ``retries``) or the environment (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``,
``PERCEPTLM_JUDGE_MODEL``); see :mod:`perceptlm.evaluation.judge`. The API key is never stored in the
records or the predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perceptlm.data.annotations import read_jsonl
from perceptlm.data.chat import IMAGE
from perceptlm.data.collate import Sample
from perceptlm.data.instruction import InstructionDataModule, fixed_task, instruction_sample

CATEGORIES = ("conv", "detail", "complex")
LAYOUTS = {"in-the-wild": "images", "coco": "val2014"}
# The judge settings a config may give: the fields of perceptlm.evaluation.judge.JudgeConfig but the
# API key, checked here so that a misspelt one fails when the datamodule is built, not after generation.
JUDGE_SETTINGS = ("backoff", "base_url", "cache_dir", "max_tokens", "model", "retries", "temperature", "timeout")


def judge_context(record: dict[str, Any], layout: str) -> str:
    """The judge's description of an image: in-the-wild captions; COCO captions, a blank line and
    ``category: bbox`` lines (LLaVA's ``eval_gpt_review_bench.py`` / ``eval_gpt_review_visual.py``)."""
    if layout == "coco":
        captions = "\n".join(record.get("captions", []))
        boxes = "\n".join(f"{box['category']}: {box['bbox']}" for box in record.get("instances", []))
        return f"{captions}\n\n{boxes}"
    caption = record.get("caption", "")
    return "\n".join(caption) if isinstance(caption, list) else str(caption)


def llava_bench_samples(root: Path, layout: str, images: Path, judge: dict[str, Any] | None = None,
                        questions: str = "questions.jsonl", answers: str = "answers_gpt4.jsonl",
                        context: str = "context.jsonl") -> list[Sample]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown LLaVA-Bench layout {layout!r}; valid: {sorted(LAYOUTS)}")
    asked = read_jsonl(root / questions, 'LLaVA-Bench questions ({"question_id", "image", "text", "category"})')
    refs = {r.get("question_id"): r for r in read_jsonl(root / answers, 'reference answers ({"question_id", "text"})')}
    contexts = {r.get("image"): r for r in read_jsonl(root / context, "judge context (captions per image)")}
    samples = []
    for number, question in enumerate(asked, start=1):
        where = f"{root / questions}: line {number}"
        qid, category = question.get("question_id"), question.get("category")
        if category not in CATEGORIES or not isinstance(question.get("text"), str) or not isinstance(question.get("image"), str):
            raise ValueError(f"{where}: needs 'image', 'text' and 'category' in {list(CATEGORIES)}; got {question!r:.120}")
        if qid not in refs or not isinstance(refs[qid].get("text"), str):
            raise ValueError(f"{where}: question {qid} has no reference answer in {root / answers}")
        if question["image"] not in contexts:
            raise ValueError(f"{where}: image {question['image']} has no context in {root / context}")
        meta = {"task": "llava_bench", "category": category, "question": question["text"],
                "context": judge_context(contexts[question["image"]], layout), "layout": layout,
                "judge": dict(judge or {})}
        samples.append(instruction_sample(str(qid), images / question["image"],
                                          [("human", f"{IMAGE}\n{question['text']}")], [refs[qid]["text"]], meta))
    return samples


class LLaVABenchDataModule(InstructionDataModule):
    """LLaVA-Bench (module docstring). ``layout``: ``in-the-wild`` or ``coco``; ``judge``: judge
    settings other than the key (``base_url``, ``model``, ``cache_dir``, ``timeout``, ``retries``).
    Generate long answers: ``--model.init_args.max_new_tokens 512`` or so."""

    name = "llava-bench"
    splits = {"train": "train", "val": "test", "test": "test", "predict": "test"}

    def __init__(self, data_root: str | None = None, layout: str = "in-the-wild", image_folder: str | None = None,
                 questions: str = "questions.jsonl", answers: str = "answers_gpt4.jsonl", context: str = "context.jsonl",
                 judge: dict[str, Any] | None = None, task: str = "llava_bench", **kwargs: Any) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown LLaVA-Bench layout {layout!r}; valid: {sorted(LAYOUTS)}")
        if judge and any("key" in k.lower() for k in judge):
            raise ValueError("do not put the judge's API key in the config; set OPENAI_API_KEY in the environment")
        if judge and set(judge) - set(JUDGE_SETTINGS):
            raise ValueError(f"unknown judge settings {sorted(set(judge) - set(JUDGE_SETTINGS))}; "
                             f"valid: {list(JUDGE_SETTINGS)}")
        super().__init__(data_root=data_root, task=fixed_task("llava-bench", task, "llava_bench"), **kwargs)
        self.layout, self.image_folder = layout, image_folder or LAYOUTS[layout]
        self.files = {"questions": questions, "answers": answers, "context": context}
        self.judge = dict(judge or {})
        self.default_subdir = f"llava-bench-{layout}"
        self.name = f"llava-bench-{layout}"

    def load_samples(self, split: str) -> list[Sample]:
        if split == "train":
            raise ValueError("LLaVA-Bench is an evaluation benchmark (no training split); use `validate` or `test`")
        return llava_bench_samples(self.root(), self.layout, self.images() / self.image_folder, self.judge, **self.files)
