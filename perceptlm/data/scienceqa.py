"""ScienceQA-IMG (Lu et al. 2022, "Learn to Explain"; Garg & Bas 2023 multiple-choice task): the
ScienceQA problems that come with an image.

Layout under ``data_root`` (the official release; default ``$PERCEPTLM_DATA/scienceqa``)::

    problems.json                 # {pid: {question, choices, answer, hint, image, subject, grade, ...}}
    pid_splits.json               # {"train": [pid, ...], "val": [...], "test": [...], ...}
    images/{split}/{pid}/image.png

The prompt follows LLaVA's ScienceQA evaluation: context (the hint) when there is one, the question,
lettered options, then "Answer with the option's letter from the given choices directly."; the
answer is the letter. Scored by the generated letter (``accuracy``) and by option likelihood
(``accuracy_likelihood``: the option whose text has the highest total log-likelihood), with
per-subject accuracies (NAT / SOC / LAN, ScienceQA's groups).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from perceptlm.data.chat import IMAGE
from perceptlm.data.collate import Sample
from perceptlm.data.instruction import InstructionDataModule, fixed_task, instruction_sample

SUFFIX = "Answer with the option's letter from the given choices directly."
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: ScienceQA file not found (expected the official release layout)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None


def scienceqa_prompt(problem: dict[str, Any]) -> str:
    """The human turn of a problem (without the image placeholder)."""
    options = "\n".join(f"{string.ascii_uppercase[k]}. {choice}" for k, choice in enumerate(problem["choices"]))
    hint = (problem.get("hint") or "").strip()
    context = f"Context: {hint}\n" if hint else ""
    return f"{context}{problem['question']}\n{options}\n{SUFFIX}"


def scienceqa_samples(root: Path, split: str, images: Path | None = None) -> list[Sample]:
    """The image problems of ``split`` as instruction samples (answer = the option letter); images
    under ``images`` (default ``root / "images"``) as ``{split}/{pid}/image.png``."""
    images = root / "images" if images is None else images
    problems = _load(root / "problems.json")
    splits = _load(root / "pid_splits.json")
    if not isinstance(problems, dict) or not isinstance(splits, dict):
        raise ValueError(f"{root}: problems.json and pid_splits.json must be JSON objects")
    if split not in splits:
        raise ValueError(f"{root / 'pid_splits.json'}: no split {split!r}; valid: {sorted(splits)}")
    samples = []
    for pid in splits[split]:
        pid = str(pid)
        problem = problems.get(pid)
        if problem is None:
            raise ValueError(f"{root / 'pid_splits.json'}: problem {pid} of split {split!r} is not in problems.json")
        if not problem.get("image"):
            continue  # ScienceQA-IMG: only problems with an image
        choices, answer = problem.get("choices"), problem.get("answer")
        if (not isinstance(choices, list) or not 2 <= len(choices) <= 26 or not isinstance(answer, int)
                or not 0 <= answer < len(choices) or not isinstance(problem.get("question"), str)):
            raise ValueError(f"{root / 'problems.json'}: problem {pid} needs 'question', 2-26 'choices' and an "
                             f"'answer' index into them; got choices={choices!r}, answer={answer!r}")
        choices = [str(c) for c in choices]
        meta = {"task": "mcq", "num_options": len(choices), "answer_index": answer,
                "group": SUBJECTS.get(problem.get("subject", ""), problem.get("subject") or "other")}
        turns = [("human", f"{IMAGE}\n{scienceqa_prompt({**problem, 'choices': choices})}")]
        samples.append(instruction_sample(pid, images / split / pid / problem["image"], turns,
                                          [string.ascii_uppercase[answer]], meta, choices))
    return samples


class ScienceQADataModule(InstructionDataModule):
    """ScienceQA-IMG (module docstring); ``minival``/``minitest`` are valid split names too."""

    name = "scienceqa-img"
    default_subdir = "scienceqa"

    def __init__(self, data_root: str | None = None, image_folder: str = "images", val_split: str = "val",
                 test_split: str = "test", task: str = "mcq", **kwargs: Any) -> None:
        super().__init__(data_root=data_root, task=fixed_task(self.name, task, "mcq"), **kwargs)
        self.image_folder = image_folder
        self.splits = {"train": "train", "val": val_split, "test": test_split, "predict": test_split}

    def load_samples(self, split: str) -> list[Sample]:
        return scienceqa_samples(self.root(), split, self.images() / self.image_folder)
