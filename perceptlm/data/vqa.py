"""VQA-family datamodules in their official formats: VQAv2 (Goyal et al., CVPR 2017), OK-VQA (Marino
et al., CVPR 2019), A-OKVQA (Schwenk et al., ECCV 2022, direct answers) and TextVQA (Singh et al.,
CVPR 2019), as evaluated in DePALM §4 (prompt ``"{question}\\n\\nAnswer: "``, VQA accuracy).

Evaluation references are all the annotators' answers of a question (10 for each dataset), scored by
the official VQA accuracy (``perceptlm.metrics``). Training target (``train_answer``):

- ``"sample"`` (default): one annotator's answer drawn uniformly at every visit, i.e. each distinct
  answer with probability proportional to its frequency among the annotators. This is DePALM's
  practice (a random choice over the question's answer list per visit).
- ``"most_frequent"``: always the most frequent answer (the first given among ties).

The official test splits have no public answers, so every dataset scores its validation split as
the test set (VQAv2 without the Karpathy split, OK-VQA, A-OKVQA, TextVQA).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

from perceptlm.data.annotations import field, read_json, records, text_field, text_list
from perceptlm.data.base import PerceptionDataModule, check_eval_limits
from perceptlm.data.coco import karpathy_images
from perceptlm.data.collate import Sample

TRAIN_ANSWERS = ("sample", "most_frequent")
Question = tuple[str, Path, str, list[str]]  # (question id, image path, question, answers)


def read_vqa_pair(questions_path: Path, annotations_path: Path, image_path: Callable[[int], Path],
                  keep: Callable[[int], bool] | None = None) -> list[Question]:
    """A VQA-format questions file + its annotations file -> questions with their answers.

    Every question must have exactly one annotation (same ``question_id``, same ``image_id``) with a
    non-empty list of non-empty answers. ``keep(image_id)`` filters by image."""
    questions = records(read_json(questions_path, "a VQA questions file"), "questions", questions_path, "questions")
    annotations = records(read_json(annotations_path, "a VQA annotations file"), "annotations", annotations_path,
                          "annotations")
    by_id: dict[int, tuple[int, dict[str, Any]]] = {}
    for index, annotation in enumerate(annotations):
        question_id = field(annotation, "question_id", int, annotations_path, f"annotations[{index}]")
        if question_id in by_id:
            raise ValueError(f"{annotations_path}: annotations[{index}] repeats question_id {question_id}")
        by_id[question_id] = (index, annotation)
    out: list[Question] = []
    for index, question in enumerate(questions):
        where = f"questions[{index}]"
        question_id = field(question, "question_id", int, questions_path, where)
        image_id = field(question, "image_id", int, questions_path, where)
        if keep is not None and not keep(image_id):
            continue
        text = text_field(question, "question", questions_path, f"{where} (question_id {question_id})")
        if question_id not in by_id:
            raise ValueError(
                f"{questions_path}: {where} has question_id {question_id}, which no record of "
                f"{annotations_path} annotates"
            )
        a_index, annotation = by_id[question_id]
        a_where = f"annotations[{a_index}] (question_id {question_id})"
        if field(annotation, "image_id", int, annotations_path, a_where) != image_id:
            raise ValueError(f"{annotations_path}: {a_where} has image_id {annotation['image_id']}, but "
                             f"{questions_path} {where} has image_id {image_id}")
        answers = field(annotation, "answers", list, annotations_path, a_where)
        if not answers:
            raise ValueError(f"{annotations_path}: {a_where} has no answers; expected 10")
        answers = [text_field(a, "answer", annotations_path, f"{a_where} answers[{i}]") for i, a in enumerate(answers)]
        out.append((str(question_id), image_path(image_id), text, answers))
    return out


def coco_questions(root: Path, images: Path, question_file: str, annotation_file: str, coco_split: str,
                   keep: Callable[[int], bool] | None = None) -> list[Question]:
    """The questions of COCO ``train2014`` or ``val2014`` images (optionally filtered) from VQA-format
    files under ``root`` (``question_file`` / ``annotation_file`` with a ``{split}`` field), images
    under ``images``."""
    folder = images / f"{coco_split}2014"
    return read_vqa_pair(
        root / question_file.format(split=coco_split), root / annotation_file.format(split=coco_split),
        lambda image_id: folder / f"COCO_{coco_split}2014_{image_id:012d}.jpg", keep,
    )


class VQADataModule(PerceptionDataModule):
    """Base of the VQA datamodules: prompt from the template, training target per ``train_answer``.

    ``data_root``: the dataset's folder (default ``$PERCEPTLM_DATA/<default_subdir>``);
    ``image_root``: where its images live when elsewhere (default: ``data_root``);
    ``val_limit`` / ``test_limit``: fixed evaluation subsets (the same on every run; None = all).
    """

    splits = {"train": "train", "val": "val", "test": "val", "predict": "val"}

    def __init__(self, data_root: str | None = None, task: str = "vqa", train_answer: str = "sample",
                 image_root: str | None = None, val_limit: int | None = None, test_limit: int | None = None,
                 **kwargs: Any) -> None:
        if task != "vqa":
            raise ValueError(f"{self.name}: task {task!r} is not available; valid: 'vqa'")
        if train_answer not in TRAIN_ANSWERS:
            raise ValueError(f"train_answer={train_answer!r} is unknown; valid: {TRAIN_ANSWERS}")
        super().__init__(data_root=data_root, task=task, **kwargs)
        check_eval_limits(val_limit, test_limit)
        self.image_root = image_root
        self.val_limit, self.test_limit = val_limit, test_limit
        self.train_answer = train_answer

    def read(self, split: str) -> list[Question]:
        raise NotImplementedError

    def load_samples(self, split: str) -> list[Sample]:
        train = split == self.splits["train"]
        samples = []
        for question_id, media, question, answers in self.read(split):
            targets = answers
            if train and self.train_answer == "most_frequent":
                targets = [Counter(answers).most_common(1)[0][0]]
            samples.append(Sample(id=question_id, media=media, prompt=self.template.format(question=question),
                                  targets=list(targets)))
        if not samples:
            raise ValueError(f"{self.name}: the {split} split has no questions")
        return samples


class VQAv2DataModule(VQADataModule):
    """VQAv2 (train2014: 443,757 questions; val2014: 214,354), 10 answers per question.

    Official splits (default): train = train2014, validation and test = val2014.
    ``karpathy_split=True`` (VL-T5 / eP-ALM / DePALM): train = train2014 + val2014 questions except
    those on the Karpathy val/test images (605,102), val = questions on the 5,000 Karpathy val images
    (26,729), test = those on the 5,000 Karpathy test images (26,280); the image ids come from the
    Karpathy captioning split file ``dataset_coco.json`` (``cocoid`` per ``split``).

    Layout under ``data_root`` (``$PERCEPTLM_DATA/vqav2`` by default; images under ``image_root``)::

        v2_OpenEnded_mscoco_{train,val}2014_questions.json
        v2_mscoco_{train,val}2014_annotations.json
        dataset_coco.json                                   # only for karpathy_split
        {train,val}2014/COCO_{split}2014_{image_id:012d}.jpg
    """

    name = "vqav2"
    default_subdir = "vqav2"
    question_file = "v2_OpenEnded_mscoco_{split}2014_questions.json"
    annotation_file = "v2_mscoco_{split}2014_annotations.json"

    def __init__(self, data_root: str | None = None, karpathy_split: bool = False,
                 karpathy_file: str = "dataset_coco.json", **kwargs: Any) -> None:
        super().__init__(data_root=data_root, **kwargs)
        self.karpathy_split, self.karpathy_file = karpathy_split, karpathy_file
        if karpathy_split:
            self.splits = {"train": "karpathy_train", "val": "karpathy_val", "test": "karpathy_test",
                           "predict": "karpathy_test"}

    def _questions(self, coco_split: str, keep: Callable[[int], bool] | None = None) -> list[Question]:
        return coco_questions(self.root(), self.images(), self.question_file, self.annotation_file, coco_split, keep)

    def read(self, split: str) -> list[Question]:
        if not self.karpathy_split:
            return self._questions(split)
        images = karpathy_images(self.root() / self.karpathy_file)
        if split == "karpathy_train":
            held_out = {image["cocoid"] for image in images if image["split"] in ("val", "test")}
            return [q for coco_split in ("train", "val")
                    for q in self._questions(coco_split, lambda image_id: image_id not in held_out)]
        chosen = [image for image in images if image["split"] == split.removeprefix("karpathy_")]
        wanted = {image["cocoid"] for image in chosen}
        # Karpathy val/test images all come from val2014; read the COCO splits their file paths name.
        coco_splits = sorted({str(image.get("filepath", "val2014")).removesuffix("2014") for image in chosen})
        return [q for coco_split in coco_splits for q in self._questions(coco_split, wanted.__contains__)]


class OKVQADataModule(VQADataModule):
    """OK-VQA v1.1 (9,009 train / 5,046 val questions on COCO 2014 images), 10 answers (the official
    ``answer`` field, as the VQA evaluation reads it). No test split: validation and test use val.

    Layout under ``data_root`` (``$PERCEPTLM_DATA/okvqa`` by default; images under ``image_root``)::

        OpenEnded_mscoco_{train,val}2014_questions.json
        mscoco_{train,val}2014_annotations.json
        {train,val}2014/COCO_{split}2014_{image_id:012d}.jpg
    """

    name = "okvqa"
    default_subdir = "okvqa"
    question_file = "OpenEnded_mscoco_{split}2014_questions.json"
    annotation_file = "mscoco_{split}2014_annotations.json"

    def read(self, split: str) -> list[Question]:
        return coco_questions(self.root(), self.images(), self.question_file, self.annotation_file, split)


class AOKVQADataModule(VQADataModule):
    """A-OKVQA v1.0, direct-answer task (17,056 train / 1,145 val questions), 10 direct answers.
    The test split has no public answers: validation and test use val.

    Layout under ``data_root`` (``$PERCEPTLM_DATA/aokvqa`` by default; images under ``image_root``)::

        aokvqa_v1p0_{train,val}.json          # [{question_id, image_id, question, direct_answers, ...}]
        {train,val}2017/{image_id:012d}.jpg   # COCO 2017
    """

    name = "aokvqa"
    default_subdir = "aokvqa"

    def read(self, split: str) -> list[Question]:
        path = self.root() / f"aokvqa_v1p0_{split}.json"
        images = self.images() / f"{split}2017"
        out = []
        for index, record in enumerate(records(read_json(path, f"the A-OKVQA {split} file"), None, path, "questions")):
            where = f"record {index}"
            question_id = text_field(record, "question_id", path, where)
            where = f"record {index} (question_id {question_id})"
            image_id = field(record, "image_id", int, path, where)
            question = text_field(record, "question", path, where)
            answers = text_list(record.get("direct_answers"), path, where, "direct_answers")
            out.append((question_id, images / f"{image_id:012d}.jpg", question, answers))
        return out


class TextVQADataModule(VQADataModule):
    """TextVQA 0.5.1 (34,602 train / 5,000 val questions), 10 answers. The test answers are not
    public: validation and test use val.

    Layout under ``data_root`` (``$PERCEPTLM_DATA/textvqa`` by default; images under ``image_root``)::

        TextVQA_0.5.1_{train,val}.json   # {"data": [{question_id, question, image_id, answers, ...}]}
        train_images/{image_id}.jpg      # train and val images
    """

    name = "textvqa"
    default_subdir = "textvqa"

    def read(self, split: str) -> list[Question]:
        path = self.root() / f"TextVQA_0.5.1_{split}.json"
        images = self.images() / "train_images"
        out = []
        data = records(read_json(path, f"the TextVQA {split} file"), "data", path, "questions")
        for index, record in enumerate(data):
            question_id = field(record, "question_id", int, path, f"data[{index}]")
            where = f"data[{index}] (question_id {question_id})"
            image_id = text_field(record, "image_id", path, where)
            question = text_field(record, "question", path, where)
            answers = text_list(record.get("answers"), path, where, "answers")
            out.append((str(question_id), images / f"{image_id}.jpg", question, answers))
        return out
