"""easy-VQA (the ``easy-vqa`` package): 4,000 train / 1,000 test images of one coloured shape,
38,575 / 9,673 questions, 13 answers. The embedded default dataset: it ships with the package.

Layout under ``data_root`` (the package's ``data/`` folder by default)::

    answers.txt
    {train,test}/questions.json   # [[question, answer, image_id], ...]
    {train,test}/images/{image_id}.png

Tasks: ``vqa`` (question -> short answer) and ``caption`` ("{color} {shape}", derived from each
image's questions).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from perceptlm.data.base import PerceptionDataModule
from perceptlm.data.collate import Sample
from perceptlm.paths import package_dir

COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")


def default_root() -> Path:
    return package_dir("easy_vqa") / "data"


def read_questions(path: Path) -> list[tuple[str, str, int]]:
    """``questions.json`` -> ``[(question, answer, image_id)]`` with record-level validation."""
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: easy-VQA questions file not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of [question, answer, image_id] records")
    out = []
    for index, record in enumerate(records):
        if (not isinstance(record, list) or len(record) != 3 or not isinstance(record[0], str)
                or not isinstance(record[1], str) or not isinstance(record[2], int)):
            raise ValueError(f"{path}: record {index} is {record!r}; expected [question, answer, image_id]")
        if not record[0].strip() or not record[1].strip():
            raise ValueError(f"{path}: record {index} has an empty question or answer: {record!r}")
        out.append((record[0], record[1], record[2]))
    return out


def question_type(answer: str) -> str:
    """easy-VQA's three question types, told apart by the answer: ``yesno``, ``color`` or ``shape``."""
    if answer in ("yes", "no"):
        return "yesno"
    if answer in COLORS:
        return "color"
    if answer in SHAPES:
        return "shape"
    raise ValueError(f"easy-VQA answer {answer!r} is not yes/no, a colour {COLORS} or a shape {SHAPES}")


def caption_of(questions: list[tuple[str, str]]) -> str | None:
    """The "{color} {shape}" of an image from its (question, answer) pairs, or None if they do
    not determine both. Yes/no questions count, with their negation ("does the image not ...")."""
    color = shape = None
    for question, answer in questions:
        words = re.findall(r"[a-z]+", question.lower())
        if answer in COLORS:
            color = answer
        if answer in SHAPES:
            shape = answer
            color = color or next((w for w in words if w in COLORS), None)
        if answer in ("yes", "no"):
            present = (answer == "yes") != ("not" in words)
            if present:
                color = color or next((w for w in words if w in COLORS), None)
                shape = shape or next((w for w in words if w in SHAPES), None)
    return f"{color} {shape}" if color and shape else None


class EasyVQADataModule(PerceptionDataModule):
    """easy-VQA for the ``vqa`` or ``caption`` task.

    ``test_limit`` fixes the evaluation subset (1,000 questions by default; None for all 9,673);
    validation reads ``val_limit`` samples of the test split.
    """

    name = "easy-vqa"
    splits = {"train": "train", "val": "test", "test": "test", "predict": "test"}

    def __init__(
        self,
        data_root: str | None = None,
        task: str = "vqa",
        test_limit: int | None = 1000,
        val_limit: int | None = 200,
        **kwargs: Any,
    ) -> None:
        if task not in ("vqa", "caption"):
            raise ValueError(f"easy-VQA task {task!r} is unknown; valid: 'vqa', 'caption'")
        super().__init__(data_root=data_root, task=task, **kwargs)
        self.test_limit = test_limit
        self.val_limit = val_limit

    def resolve_root(self) -> Path:
        return Path(self.data_root) if self.data_root else default_root()

    def load_samples(self, split: str) -> list[Sample]:
        root = self.resolve_root()
        questions = read_questions(root / split / "questions.json")
        images = root / split / "images"
        if self.task == "vqa":
            template = self.template
            return [
                Sample(id=f"{split}-{i}", media=images / f"{image_id}.png",
                       prompt=template.format(question=question), targets=[answer],
                       extra={"meta": {"question_type": question_type(answer)}})
                for i, (question, answer, image_id) in enumerate(questions)
            ]
        by_image: dict[int, list[tuple[str, str]]] = {}
        for question, answer, image_id in questions:
            by_image.setdefault(image_id, []).append((question, answer))
        samples = []
        for image_id in sorted(by_image):
            caption = caption_of(by_image[image_id])
            if caption is not None:
                samples.append(Sample(id=f"{split}-img{image_id}", media=images / f"{image_id}.png",
                                      prompt=self.template, targets=[caption]))
        return samples
