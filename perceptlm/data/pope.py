"""POPE (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models"): yes/no
probes "Is there a {object} in the image?" on COCO val2014 images, half about present objects and
half about absent ones, sampled at random, among the most frequent objects (popular) or among the
objects co-occurring most with the present ones (adversarial). Garg & Bas 2023: binary yes/no task.

Layout under ``data_root`` (default ``$PERCEPTLM_DATA/pope``), as released by the POPE authors
(``output/coco/``)::

    coco_pope_random.json         # JSON lines: {"question_id", "image", "text", "label": "yes"|"no"}
    coco_pope_popular.json
    coco_pope_adversarial.json
    val2014/COCO_val2014_*.jpg    # ``image_folder`` (under ``image_root`` when given)

Evaluation only. Metrics (POPE's ``evaluate.py``, :func:`perceptlm.metrics.functional.yes_no_metrics`):
accuracy, precision, recall, F1 and yes-ratio, overall and per subset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perceptlm.data.chat import IMAGE
from perceptlm.data.annotations import read_jsonl
from perceptlm.data.collate import Sample
from perceptlm.data.instruction import InstructionDataModule, fixed_task, instruction_sample

SUBSETS = ("random", "popular", "adversarial")
SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's POPE prompt


def read_pope(path: Path) -> list[dict[str, Any]]:
    """A POPE question file (one JSON object per line), validated line by line."""
    def valid(record: dict[str, Any]) -> bool:
        return (isinstance(record.get("image"), str) and isinstance(record.get("text"), str)
                and record.get("label") in ("yes", "no") and "question_id" in record)

    out = read_jsonl(path, 'POPE questions {"question_id", "image", "text", "label": "yes"|"no"} '
                     "(coco_pope_{random,popular,adversarial}.json)", valid)
    if not out:
        raise ValueError(f"{path}: no questions")
    return out


class POPEDataModule(InstructionDataModule):
    """POPE on COCO (module docstring). ``subset``: one of random / popular / adversarial, or
    ``all`` (the three, metrics per subset too). ``suffix`` is appended to each question on a new
    line (empty for none)."""

    name = "pope"
    default_subdir = "pope"
    splits = {"train": "train", "val": "test", "test": "test", "predict": "test"}

    def __init__(self, data_root: str | None = None, subset: str = "all", image_folder: str = "val2014",
                 suffix: str = SHORT_ANSWER, task: str = "yesno", **kwargs: Any) -> None:
        if subset not in (*SUBSETS, "all"):
            raise ValueError(f"unknown POPE subset {subset!r}; valid: {[*SUBSETS, 'all']}")
        super().__init__(data_root=data_root, task=fixed_task(self.name, task, "yesno"), **kwargs)
        self.subset, self.image_folder, self.suffix = subset, image_folder, suffix

    def load_samples(self, split: str) -> list[Sample]:
        if split == "train":
            raise ValueError("POPE is an evaluation benchmark (no training split); use `validate` or `test`")
        samples = []
        for subset in SUBSETS if self.subset == "all" else (self.subset,):
            path = self.root() / f"coco_pope_{subset}.json"
            for record in read_pope(path):
                question = record["text"].strip() + (f"\n{self.suffix}" if self.suffix else "")
                samples.append(instruction_sample(
                    f"{subset}-{record['question_id']}", self.images() / self.image_folder / record["image"],
                    [("human", f"{IMAGE}\n{question}")], [record["label"]], {"task": "yesno", "group": subset}))
        return samples
