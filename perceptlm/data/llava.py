"""LLaVA-Instruct (Liu et al. 2023, "Visual Instruction Tuning"; Garg & Bas 2023 §2: LLaVA stage 2).

Layout under ``data_root`` (default ``$PERCEPTLM_DATA/llava``; images under ``image_root`` when given)::

    llava_instruct_150k.json      # [{"id", "image", "conversations": [{"from", "value"}, ...]}, ...]
    train2017/{image}             # COCO train2017 images, ``image`` as in the record (``image_folder``)

Multi-turn; the loss is on every assistant turn and its end-of-turn token. LLaVA releases no
validation split: ``holdout`` records (a fixed seeded choice, independent of ``seed``) are kept out of
training and used for validation and test, or ``eval_annotations`` names a separate file. Records
without an image (text-only ShareGPT turns in LLaVA-1.5's mixture) are dropped and counted.
Evaluation generates the last answer of each held-out conversation ("conversation" task: normalised
exact match and ROUGE-L against the reference answer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from perceptlm.data.collate import Sample
from perceptlm.data.instruction import InstructionDataModule, fixed_task, instruction_sample, parse_llava_record


def read_llava_json(path: Path) -> list[dict[str, Any]]:
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: LLaVA instruction file not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records with 'id', 'image', 'conversations'")
    return records


def llava_samples(path: Path, image_root: Path, meta: dict[str, Any] | None = None) -> tuple[list[Sample], int]:
    """Samples of a LLaVA JSON file (ids made unique with ``#n``) and the number of text-only
    records dropped."""
    samples, seen, text_only = [], {}, 0
    for index, record in enumerate(read_llava_json(path)):
        record_id, image, turns = parse_llava_record(record, index, path)
        if image is None:
            text_only += 1
            continue
        count = seen.get(record_id, 0)
        seen[record_id] = count + 1
        unique = record_id if count == 0 else f"{record_id}#{count}"
        samples.append(instruction_sample(unique, image_root / image, turns[:-1], [turns[-1][1]],
                                          {"task": "conversation", **(meta or {})}))
    return samples, text_only


class LLaVAInstructDataModule(InstructionDataModule):
    """LLaVA conversation JSON (``annotations`` under ``data_root``, images under ``image_folder``)."""

    name = "llava-instruct"
    default_subdir = "llava"

    def __init__(self, data_root: str | None = None, annotations: str = "llava_instruct_150k.json",
                 image_folder: str = "train2017", eval_annotations: str | None = None, holdout: int = 200,
                 task: str = "conversation", **kwargs: Any) -> None:
        super().__init__(data_root=data_root, task=fixed_task(self.name, task, "conversation"), **kwargs)
        if holdout < 0:
            raise ValueError(f"holdout={holdout} must be >= 0")
        self.annotations, self.image_folder = annotations, image_folder
        self.eval_annotations, self.holdout = eval_annotations, holdout
        self._cache: dict[str, list[Sample]] = {}

    def _read(self, name: str) -> list[Sample]:
        if name not in self._cache:
            root = self.root()
            samples, dropped = llava_samples(root / name, self.images() / self.image_folder)
            if dropped:
                print(f"{self.name}: {root / name}: {dropped} text-only records (no image) skipped")
            self._cache[name] = samples
        return self._cache[name]

    def load_samples(self, split: str) -> list[Sample]:
        samples = self._read(self.annotations)
        if self.eval_annotations is not None:
            return samples if split == "train" else self._read(self.eval_annotations)
        if self.holdout >= len(samples):
            raise ValueError(f"{self.name}: holdout={self.holdout} leaves no training records of {len(samples)}")
        held = set(np.random.default_rng(0).permutation(len(samples))[: self.holdout].tolist())
        keep = [i for i in range(len(samples)) if (i in held) != (split == "train")]
        return [samples[i] for i in keep]
