"""easy-instruct: an instruction set generated from easy-VQA by code, so that the whole
instruction-tuning comparison of Garg & Bas (2023) runs offline on the embedded data.

Every easy-VQA image shows one coloured shape (8 colours x 3 shapes); an image's colour and shape
come from its questions (:func:`perceptlm.data.easyvqa.caption_of`). Task families (LLaVA JSON
records, ``id``/``image``/``conversations``, plus ``meta`` and ``options``):

* ``conversation``: per image two conversations of up to ``turns`` turns, one scored on its colour
  and one on its shape. The earlier turns are the image's own easy-VQA question/answer pairs about
  the other attribute only (a seeded choice), so no earlier turn names or rules out the scored
  answer; the last turn asks for the attribute in one of easy-VQA's open wordings ("what color is
  the shape?"). The scored answer is never a yes/no whose question form predicts it ("is there a
  yellow shape?" is "no" for 7 images in 8): without the image, the best guess is the attribute's
  most frequent value.
* ``mcq``: lettered multiple choice (colour: 4 options, shape: 3, "colour shape" description: 4, with
  seeded distractors); the answer is the letter (ScienceQA-style prompt, LLaVA-1.5 suffix).
* ``yesno``: POPE-style probes (Li et al. 2023, "Evaluating Object Hallucination in Large
  Vision-Language Models"), per image two present ("yes") and two absent ("no") probes, one about
  the shape and one about the colour, so every subset is exactly 50/50 (``meta["probe"]``:
  ``shape-yes``, ``shape-no``, ``color-yes``, ``color-no``). Absent ones by ``pope``:
  ``random`` (uniform over absent shapes/colours), ``popular`` (the most frequent absent ones in the
  split), ``adversarial`` (the absent ones co-occurring most often with the present shape/colour).
* ``caption``: a caption instruction (seeded choice) -> "a red circle"; CHAIR over the shapes.
* ``all``: the four families together (task ``instruct``: metrics per family).

Generation is deterministic: choices are seeded by strings (split, family, image id), independent
of the run's ``seed``.

``reasoned`` changes the training answers of the ``yesno`` and ``mcq`` families (``True``: both; a
list: those named) so that the model states what it sees before it answers:

* yes/no: "a yellow circle, so no.": the comparison of the image with the word asked about becomes
  a comparison of two words of text;
* multiple choice: the chosen option's words, then its letter ("yellow circle, so B."): seeing the
  answer and finding its letter become two steps, and the answer opens with the words that option
  likelihood scores.

Evaluation references stay "yes" / "no" and the letter; POPE's rules read a reasoned yes/no (its
first sentence holds "no" or not) and the letter parser a reasoned letter (a capital standing alone
at the end). A control for where those families fail: seeing the attribute, or answering in the
family's form.

``describe=True`` is a text oracle: the first user turn also states the image's colour and shape
("The image shows a red circle."), so a model trained and tested on it shows what perfect perception
reaches with the same LLM, recipe and budget (records of images whose questions do not determine
both stay as they are).
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from perceptlm.data.chat import IMAGE
from perceptlm.data.collate import Sample
from perceptlm.data.easyvqa import COLORS, SHAPES, caption_of, default_root, read_questions
from perceptlm.data.instruction import (
    CAPTION_INSTRUCTIONS,
    InstructionDataModule,
    fixed_task,
    instruction_sample,
    parse_llava_record,
)

FAMILIES = ("conversation", "mcq", "yesno", "caption")
REASONED_FAMILIES = ("yesno", "mcq")  # the families with a reasoned answer form (``reasoned``)
POPE_SUBSETS = ("random", "popular", "adversarial")
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCD"
# easy-VQA's open questions about one attribute (the conversation family's scored turn)
OPEN_QUESTIONS = {"color": ("what color is the shape?", "what is the color of the shape?"),
                  "shape": ("what shape is in the image?", "what shape does the image contain?", "what shape is present?")}


@dataclass(frozen=True)
class ImageFacts:
    image_id: int
    qas: tuple[tuple[str, str], ...]
    color: str | None
    shape: str | None

    @property
    def description(self) -> str | None:
        """"a {color} {shape}" (the caption), or None where the questions do not determine both."""
        return f"a {self.color} {self.shape}" if self.color is not None else None


def image_facts(root: Path, split: str) -> list[ImageFacts]:
    """Per image (sorted by id): its question/answer pairs and, where they determine them, its colour and shape."""
    return list(_image_facts(str(root), split))


@functools.lru_cache(maxsize=4)
def _image_facts(root: str, split: str) -> tuple[ImageFacts, ...]:
    by_image: dict[int, list[tuple[str, str]]] = {}
    for question, answer, image_id in read_questions(Path(root) / split / "questions.json"):
        by_image.setdefault(image_id, []).append((question, answer))
    facts = []
    for image_id in sorted(by_image):
        caption = caption_of(by_image[image_id])
        color, shape = caption.split() if caption else (None, None)
        facts.append(ImageFacts(image_id, tuple(by_image[image_id]), color, shape))
    return tuple(facts)


def _rng(*parts: Any) -> random.Random:
    return random.Random(":".join(["easy-instruct", *map(str, parts)]))


def _record(record_id: str, image_id: int, turns: list[tuple[str, str]], meta: dict[str, Any],
            options: list[str] | None = None) -> dict[str, Any]:
    record = {"id": record_id, "image": f"{image_id}.png",
              "conversations": [{"from": role, "value": text} for role, text in turns], "meta": meta}
    if options is not None:
        record["options"] = options
    return record


def attributes(question: str, answer: str) -> frozenset[str]:
    """The attributes ("color", "shape") a question/answer pair names a value of."""
    words = set(re.findall(r"[a-z]+", f"{question} {answer}".lower()))
    return frozenset(name for name, values in (("color", COLORS), ("shape", SHAPES)) if words & set(values))


def conversation_records(facts: list[ImageFacts], split: str, turns: int = 3) -> list[dict[str, Any]]:
    out = []
    for fact in facts:
        if fact.description is None:
            continue
        rng = _rng("conversation", split, fact.image_id)
        for attribute, other, answer in (("color", "shape", fact.color), ("shape", "color", fact.shape)):
            context = [qa for qa in fact.qas if attributes(*qa) == {other}]
            chosen = [*rng.sample(context, min(turns - 1, len(context))), (rng.choice(OPEN_QUESTIONS[attribute]), answer)]
            conversation = []
            for k, (question, reply) in enumerate(chosen):
                conversation += [("human", f"{IMAGE}\n{question}" if k == 0 else question), ("gpt", reply)]
            out.append(_record(f"{split}-conversation-{fact.image_id}-{attribute}", fact.image_id, conversation,
                               {"task": "conversation", "turns": len(chosen), "scored": attribute}))
    return out


def reasoned_letter(option: str, letter: str) -> str:
    """A multiple-choice answer that first states the chosen option: "yellow circle, so B."."""
    return f"{option}, so {letter}."


def _mcq(record_id: str, fact: ImageFacts, question: str, correct: str, distractors: list[str],
         rng: random.Random, kind: str, reasoned: bool = False) -> dict[str, Any]:
    options = [correct, *distractors]
    rng.shuffle(options)
    answer = options.index(correct)
    lines = "\n".join(f"{LETTERS[k]}. {option}" for k, option in enumerate(options))
    reply = reasoned_letter(correct, LETTERS[answer]) if reasoned else LETTERS[answer]
    turns = [("human", f"{IMAGE}\n{question}\n{lines}\n{MCQ_SUFFIX}"), ("gpt", reply)]
    meta = {"task": "mcq", "num_options": len(options), "answer_index": answer, "group": kind}
    return _record(record_id, fact.image_id, turns, meta, options)


def mcq_records(facts: list[ImageFacts], split: str, reasoned: bool = False) -> list[dict[str, Any]]:
    """Three lettered questions per image (module docstring); ``reasoned``: answers by
    :func:`reasoned_letter`. The options and their order do not depend on ``reasoned``."""
    out = []
    for fact in facts:
        if fact.color is None:
            continue
        color, shape, base = fact.color, fact.shape, f"{split}-mcq-{fact.image_id}"
        rng = _rng("mcq", split, fact.image_id)
        other_colors = [c for c in COLORS if c != color]
        other_shapes = [s for s in SHAPES if s != shape]
        out.append(_mcq(f"{base}-color", fact, "What color is the shape?", color, rng.sample(other_colors, 3), rng, "color",
                        reasoned))
        out.append(_mcq(f"{base}-shape", fact, "What shape is in the image?", shape, other_shapes, rng, "shape", reasoned))
        c1, c2 = rng.sample(other_colors, 2)
        s1 = rng.choice(other_shapes)
        distractors = [f"{c1} {shape}", f"{color} {s1}", f"{c2} {rng.choice(other_shapes)}"]
        out.append(_mcq(f"{base}-description", fact, "Which description matches the image?", f"{color} {shape}",
                        distractors, rng, "description", reasoned))
    return out


def _argmax(candidates: list[str], counts: Counter) -> str:
    """The most counted candidate; ties go to the earlier one in the fixed COLORS/SHAPES order."""
    return max(candidates, key=lambda c: (counts[c], -candidates.index(c)))


def absent_choices(facts: list[ImageFacts], split: str, subset: str) -> dict[int, tuple[str, str]]:
    """Per image with known colour and shape: the (absent shape, absent colour) its negative probes
    ask about, by POPE negative sampling ``subset``."""
    if subset not in POPE_SUBSETS:
        raise ValueError(f"unknown POPE subset {subset!r}; valid: {list(POPE_SUBSETS)}")
    known = [f for f in facts if f.color is not None]
    frequency = Counter([f.shape for f in known] + [f.color for f in known])
    with_shape = {s: Counter(f.color for f in known if f.shape == s) for s in SHAPES}
    with_color = {c: Counter(f.shape for f in known if f.color == c) for c in COLORS}
    out = {}
    for fact in known:
        shapes = [s for s in SHAPES if s != fact.shape]
        colors = [c for c in COLORS if c != fact.color]
        if subset == "random":
            rng = _rng("yesno", split, fact.image_id)
            out[fact.image_id] = (rng.choice(shapes), rng.choice(colors))
        elif subset == "popular":
            out[fact.image_id] = (_argmax(shapes, frequency), _argmax(colors, frequency))
        else:  # adversarial: co-occurring with what is present
            out[fact.image_id] = (_argmax(shapes, with_color[fact.color]), _argmax(colors, with_shape[fact.shape]))
    return out


def reasoned_answer(fact: ImageFacts, answer: str) -> str:
    """A yes/no answer that first states what the image shows: "a yellow circle, so no."."""
    return f"{fact.description}, so {answer}."


def yesno_records(facts: list[ImageFacts], split: str, subset: str = "random",
                  reasoned: bool = False) -> list[dict[str, Any]]:
    """POPE-style probes (module docstring); ``reasoned``: answers by :func:`reasoned_answer`."""
    absent = absent_choices(facts, split, subset)
    out = []
    for fact in facts:
        if fact.image_id not in absent:
            continue
        no_shape, no_color = absent[fact.image_id]
        probes = [("shape-yes", f"Is there a {fact.shape} in the image?", "yes"),
                  ("shape-no", f"Is there a {no_shape} in the image?", "no"),
                  ("color-yes", f"Is there a {fact.color} shape in the image?", "yes"),
                  ("color-no", f"Is there a {no_color} shape in the image?", "no")]
        for name, question, answer in probes:
            reply = reasoned_answer(fact, answer) if reasoned else answer
            out.append(_record(f"{split}-yesno-{subset}-{fact.image_id}-{name}", fact.image_id,
                               [("human", f"{IMAGE}\n{question}"), ("gpt", reply)],
                               {"task": "yesno", "group": subset, "probe": name}))
    return out


def caption_records(facts: list[ImageFacts], split: str) -> list[dict[str, Any]]:
    out = []
    for fact in facts:
        if fact.description is None:
            continue
        instruction = _rng("caption", split, fact.image_id).choice(CAPTION_INSTRUCTIONS)
        out.append(_record(f"{split}-caption-{fact.image_id}", fact.image_id,
                           [("human", f"{IMAGE}\n{instruction}"), ("gpt", fact.description)],
                           {"task": "caption", "objects": [fact.shape], "vocabulary": "easy-vqa"}))
    return out


def describe_image(records: list[dict[str, Any]], facts: list[ImageFacts]) -> list[dict[str, Any]]:
    """The records with the image's colour and shape stated after ``<image>`` in the first turn (text oracle)."""
    described = {f"{f.image_id}.png": f.description for f in facts if f.description is not None}
    out = []
    for record in records:
        if record["image"] in described:
            first, *rest = record["conversations"]
            text = first["value"].replace(f"{IMAGE}\n", f"{IMAGE}\nThe image shows {described[record['image']]}.\n", 1)
            record = {**record, "conversations": [{**first, "value": text}, *rest]}
        out.append(record)
    return out


def reasoned_families(reasoned: bool | Sequence[str]) -> tuple[str, ...]:
    """The families whose answers are reasoned: ``True`` -> all of :data:`REASONED_FAMILIES`,
    ``False`` -> none, a list -> those named (each one of :data:`REASONED_FAMILIES`)."""
    if isinstance(reasoned, bool):
        return REASONED_FAMILIES if reasoned else ()
    if isinstance(reasoned, str):
        raise ValueError(f"reasoned={reasoned!r}: give true, false or a list of families among {list(REASONED_FAMILIES)}")
    families = tuple(reasoned)
    unknown = [f for f in families if f not in REASONED_FAMILIES]
    if unknown:
        raise ValueError(f"reasoned names {unknown}, which have no reasoned answers; valid: {list(REASONED_FAMILIES)}")
    return tuple(f for f in REASONED_FAMILIES if f in families)


def easy_instruct_records(facts: list[ImageFacts], split: str, family: str = "all", pope: str = "random",
                          turns: int = 3, reasoned: bool | Sequence[str] = False) -> list[dict[str, Any]]:
    """The records of ``family`` (or ``all``) for these images, in LLaVA JSON format (+ meta, options);
    ``reasoned``: the families answered by :func:`reasoned_answer` / :func:`reasoned_letter`
    (:func:`reasoned_families`)."""
    reasoned = reasoned_families(reasoned)
    builders = {"conversation": lambda: conversation_records(facts, split, turns),
                "mcq": lambda: mcq_records(facts, split, "mcq" in reasoned),
                "yesno": lambda: yesno_records(facts, split, pope, "yesno" in reasoned),
                "caption": lambda: caption_records(facts, split)}
    if family not in (*FAMILIES, "all"):
        raise ValueError(f"unknown easy-instruct family {family!r}; valid: {[*FAMILIES, 'all']}")
    return [r for name in (FAMILIES if family == "all" else (family,)) for r in builders[name]()]


class EasyInstructDataModule(InstructionDataModule):
    """The easy-instruct families (module docstring) over the easy-VQA package data.

    Evaluation uses a fixed set of test-split images (``test_images``; validation the first
    ``val_images`` of the same choice, seed 0) with every record of those images, so yes/no stays
    50/50 and all families see the same images. ``fraction``/``limit`` subsample training records.
    ``reasoned``: training answers of the yes/no and multiple-choice families (``True``: both; or a
    list of them) that state what the image shows first; ``describe``: the text oracle (module
    docstring).
    """

    name = "easy-instruct"
    splits = {"train": "train", "val": "val", "test": "test", "predict": "test"}

    def __init__(self, data_root: str | None = None, family: str = "all", pope: str = "random", turns: int = 3,
                 test_images: int | None = 200, val_images: int | None = 50, task: str | None = None,
                 max_length: int = 512, describe: bool = False,
                 reasoned: bool | list[str] = False, **kwargs: Any) -> None:
        if family not in (*FAMILIES, "all"):
            raise ValueError(f"unknown easy-instruct family {family!r}; valid: {[*FAMILIES, 'all']}")
        if pope not in POPE_SUBSETS:
            raise ValueError(f"unknown POPE subset {pope!r}; valid: {list(POPE_SUBSETS)}")
        if turns < 1:
            raise ValueError(f"turns={turns} must be >= 1")
        task = fixed_task(f"{self.name} family {family!r}", task, "instruct" if family == "all" else family)
        super().__init__(data_root=data_root, task=task, max_length=max_length, **kwargs)
        self.family, self.pope, self.turns = family, pope, turns
        self.test_images, self.val_images, self.describe = test_images, val_images, describe
        self.reasoned = reasoned_families(reasoned)

    def root(self) -> Path:
        return Path(self.data_root) if self.data_root else default_root()

    def records(self, split: str) -> list[dict[str, Any]]:
        """LLaVA-format records of a stage's split ("val" = a subset of the test images)."""
        root = self.root()
        facts = image_facts(root, "train" if split == "train" else "test")
        if split != "train":
            limit = self.val_images if split == "val" else self.test_images
            if limit is not None:
                keep = set(np.random.default_rng(0).permutation(len(facts))[:limit].tolist())
                facts = [f for k, f in enumerate(facts) if k in keep]
        reasoned = self.reasoned if split == "train" else ()  # evaluation references stay yes/no, the letter
        records = easy_instruct_records(facts, "train" if split == "train" else "test", self.family, self.pope, self.turns,
                                        reasoned=reasoned)
        return describe_image(records, facts) if self.describe else records

    def load_samples(self, split: str) -> list[Sample]:
        folder = "train" if split == "train" else "test"
        images = self.root() / folder / "images"
        samples = []
        for index, record in enumerate(self.records(split)):
            record_id, image, turns = parse_llava_record(record, index, f"easy-instruct/{folder}")
            samples.append(instruction_sample(record_id, images / image, turns[:-1], [turns[-1][1]],
                                              record["meta"], record.get("options")))
        return samples
