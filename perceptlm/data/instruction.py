"""Instruction data (LLaVA, Liu et al. 2023; Garg & Bas 2023 §2): conversation records, their
collator and the datamodule base every instruction dataset shares.

An instruction :class:`~perceptlm.data.collate.Sample` keeps the conversation up to its last human
turn in ``extra["turns"]`` (``[(role, text), ...]``, roles ``"human"``/``"gpt"``) and the last
answer's alternatives in ``targets`` (training samples one per visit; evaluation scores against
all). ``extra["meta"]`` (JSON-serialisable) travels to the evaluation records for per-task scoring;
``extra["options"]`` (multiple choice) enables option-likelihood scoring.

Batches (:class:`~perceptlm.batch.Batch`) carry the fields of :class:`~perceptlm.data.collate.Collator`,
plus:

* ``media_position`` ``[B]``: the token index (in ``input_ids``, or in the left-padded ``prompt_ids``)
  where the ``<image>`` placeholder was; the text before it and after it are tokenised separately.
  The model's L0 prefix path puts perception before all text, which equals this placement when the
  placeholder opens the text; a model that splices perception in place reads this index.
* ``meta``: one dict per sample; ``option_ids`` (evaluation, when samples have options): per sample,
  the token ids of each option as the assistant's answer.

The instruction an instruction-aware connector (InstructBLIP) reads is the unsupervised text of a
training row (:attr:`~perceptlm.batch.Batch.instruction_mask`) or the prompt of an evaluation row.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

from perceptlm.batch import Batch
from perceptlm.data.base import PerceptionDataModule, check_eval_limits
from perceptlm.data.chat import GPT, HUMAN, IMAGE, NAMED_TEMPLATES, chat_template, encode, end_of_turn_ids
from perceptlm.data.collate import Collator, Sample

TEMPLATE_NAMES = ("auto", "tokenizer", *NAMED_TEMPLATES)

CAPTION_INSTRUCTIONS = (
    "Describe the image briefly.",
    "Give a short description of the image.",
    "Write a brief caption for this picture.",
    "Summarize what the image shows in a few words.",
    "What does this image show? Answer briefly.",
    "Provide a one-sentence description of the picture.",
    "Caption the image concisely.",
    "Briefly say what is in the image.",
)


def instruction_sample(sample_id: str, media: Any, turns: list[tuple[str, str]], targets: list[str],
                       meta: dict[str, Any] | None = None, options: list[str] | None = None) -> Sample:
    """A Sample for a conversation ending with a human turn, answered by one of ``targets``."""
    if not turns or turns[-1][0] != HUMAN:
        raise ValueError(f"record {sample_id}: the conversation must end with a human turn before its answer")
    if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
        raise ValueError(f"record {sample_id}: empty answer {targets!r}")
    extra: dict[str, Any] = {"turns": [tuple(t) for t in turns], "meta": dict(meta or {})}
    if options is not None:
        extra["options"] = list(options)
    prompt = turns[-1][1].replace(IMAGE, "").strip()
    return Sample(str(sample_id), media, prompt, list(targets), extra)


def parse_llava_record(record: Any, index: int, path: Path | str) -> tuple[str, str | None, list[tuple[str, str]]]:
    """A LLaVA JSON record -> ``(id, image or None, turns)``; ``<image>`` is put at the start of the
    first human turn when the record has an image but no placeholder (LLaVA's convention)."""
    where = f"{path}: record {index}"
    if not isinstance(record, dict) or "conversations" not in record:
        raise ValueError(f"{where}: expected an object with 'id', 'image', 'conversations'")
    record_id = str(record.get("id", index))
    conversations = record["conversations"]
    if not isinstance(conversations, list) or len(conversations) < 2:
        raise ValueError(f"{where} (id {record_id}): 'conversations' must list at least one human and one gpt turn")
    turns = []
    for k, turn in enumerate(conversations):
        if not isinstance(turn, dict) or turn.get("from") not in (HUMAN, GPT) or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where} (id {record_id}): turn {k} is {str(turn)[:80]!r}; expected "
                             f"{{'from': 'human'|'gpt', 'value': str}}")
        expected = HUMAN if k % 2 == 0 else GPT
        if turn["from"] != expected:
            raise ValueError(f"{where} (id {record_id}): turn {k} is from {turn['from']!r}; turns alternate human/gpt")
        turns.append((turn["from"], turn["value"]))
    if turns[-1][0] != GPT:
        raise ValueError(f"{where} (id {record_id}): the last turn must be a gpt answer")
    image = record.get("image")
    if image is not None and not isinstance(image, str):
        raise ValueError(f"{where} (id {record_id}): 'image' must be a file name, got {image!r}")
    placeholders = sum(text.count(IMAGE) for _, text in turns)
    if placeholders > 1 or any(IMAGE in text for role, text in turns if role == GPT):
        raise ValueError(f"{where} (id {record_id}): one {IMAGE} placeholder in a human turn is supported")
    if image is not None and placeholders == 0:
        turns[0] = (HUMAN, f"{IMAGE}\n{turns[0][1]}")
    return record_id, image, turns


def captions_to_instructions(samples: list[Sample], instructions: tuple[str, ...] | list[str] = CAPTION_INSTRUCTIONS,
                             seed: int = 0) -> list[Sample]:
    """Caption pairs -> single-turn instruction records for the alignment stage: each sample gets
    one instruction (a seeded choice per sample id) and keeps all its captions as answers."""
    if not instructions:
        raise ValueError("captions_to_instructions needs at least one instruction")
    out = []
    for sample in samples:
        instruction = random.Random(f"{seed}:{sample.id}").choice(list(instructions))
        meta = {"task": "caption", **(sample.extra.get("meta") or {})}
        out.append(instruction_sample(sample.id, sample.media, [(HUMAN, f"{IMAGE}\n{instruction}")],
                                      sample.targets, meta))
    return out


def fixed_task(dataset: str, task: str | None, expected: str) -> str:
    """The one task a dataset has; another value is an error naming the valid one."""
    if task not in (None, expected):
        raise ValueError(f"{dataset}: task {task!r} is not available; valid: {expected!r}")
    return expected


class InstructionCollator(Collator):
    """:class:`~perceptlm.data.collate.Collator` whose rows are conversations rendered with a chat
    template (see the module docstring for the fields it adds). Which of a sample's answers a
    training visit uses is :meth:`Collator.pick` (seed, epoch, id)."""

    def __init__(self, tokenizer: Any, task: str, train: bool, template: str = "auto", system: str | None = None,
                 stack_media: Callable[[list[Any]], Any] | None = None, max_length: int = 2048, seed: int = 0,
                 option_likelihood: bool = True) -> None:
        super().__init__(tokenizer, task, train, stack_media=stack_media, max_length=max_length, seed=seed)
        self.format = chat_template(template, tokenizer, system)
        self.option_likelihood = option_likelihood

    def _encode(self, turns: list[tuple[str, str]]):
        return encode(self.format.pieces(turns), self.tokenizer)

    def _options(self, sample: Sample) -> list[list[int]]:
        """Each option's answer tokens (no end-of-turn) as this template renders an answer."""
        out = []
        for option in sample.extra["options"]:
            encoded = self._encode([*sample.extra["turns"], (GPT, option)])
            out.append([t for t, k in zip(encoded.input_ids, encoded.kinds) if k == "answer"])
        return out

    def train_row(self, sample: Sample) -> tuple[list[int], list[int], int]:
        """The conversation with the picked answer; labels on every assistant turn and its end."""
        encoded = self._encode([*sample.extra["turns"], (GPT, sample.targets[self.pick(sample)])])
        ids, labels = encoded.input_ids[: self.max_length], encoded.labels[: self.max_length]
        if all(t == -100 for t in labels):
            raise ValueError(f"record {sample.id}: max_length={self.max_length} cuts off every answer token "
                             f"({len(encoded.input_ids)} tokens); raise max_length")
        return ids, labels, min(encoded.media_position, len(ids))

    def prompt_row(self, sample: Sample) -> tuple[list[int], int]:
        """The conversation up to the assistant's answer (its last ``max_length`` tokens)."""
        encoded = self._encode(list(sample.extra["turns"]))
        cut = max(0, len(encoded.input_ids) - self.max_length)
        return encoded.input_ids[cut:], max(0, encoded.media_position - cut)

    def add_eval_fields(self, batch: Batch, samples: list[Sample]) -> None:
        if self.option_likelihood and any("options" in s.extra for s in samples):
            batch.option_ids = [self._options(s) if "options" in s.extra else [] for s in samples]


class InstructionDataModule(PerceptionDataModule):
    """Base for instruction datasets: ``template`` is the chat template (``auto`` = the tokenizer's
    own when it has one, else ``vicuna_v1``; ``tokenizer``; ``vicuna_v1``; ``llava_v0``; ``plain``),
    ``system`` overrides its system prompt, ``option_likelihood`` also scores multiple-choice options
    by their log-likelihood at evaluation.

    ``data_root``: the dataset's folder (default ``$PERCEPTLM_DATA/<default_subdir>``);
    ``image_root``: where its images live when elsewhere (default: ``data_root``);
    ``val_limit`` / ``test_limit``: fixed evaluation subsets (the same on every run; None = all)."""

    collator_class = InstructionCollator

    def __init__(self, data_root: str | None = None, task: str = "conversation", template: str = "auto",
                 system: str | None = None, option_likelihood: bool = True, max_length: int = 2048,
                 image_root: str | None = None, val_limit: int | None = None, test_limit: int | None = None,
                 **kwargs: Any) -> None:
        if template not in TEMPLATE_NAMES:
            raise ValueError(f"unknown chat template {template!r}; valid: {list(TEMPLATE_NAMES)}")
        super().__init__(data_root=data_root, task=task, template=template, max_length=max_length, **kwargs)
        check_eval_limits(val_limit, test_limit)
        self.image_root = image_root
        self.val_limit, self.test_limit = val_limit, test_limit
        self.system = system
        self.option_likelihood = option_likelihood

    def stop_token_ids(self) -> list[int]:
        """The token that ends an assistant turn in this template (``<|im_end|>``, ``<|eot_id|>``,
        EOS, ...) when it is a single token, for generation to stop at besides the LLM's EOS; a
        multi-token end (llava_v0's "###") is left to ``stop_strings``. Needs the tokenizer
        (:meth:`connect` calls it)."""
        ids = end_of_turn_ids(self.template, self.tokenizer, self.system)
        return ids if len(ids) == 1 else []

    def collator_options(self) -> dict[str, Any]:
        return {"template": self.template, "system": self.system, "option_likelihood": self.option_likelihood}


class CaptionInstructDataModule(InstructionDataModule):
    """Any captioning datamodule (``source``) as single-turn instruction records for the alignment
    stage (LLaVA stage 1): "<image>\\n{instruction}" -> caption, instructions from ``instructions``
    (default :data:`CAPTION_INSTRUCTIONS`), a seeded choice per sample. Scored as captions (CIDEr)."""

    def __init__(self, source: PerceptionDataModule, instructions: list[str] | None = None, task: str = "caption",
                 **kwargs: Any) -> None:
        super().__init__(task=fixed_task("caption instructions", task, "caption"), **kwargs)
        if source.task != "caption":
            raise ValueError(f"{type(source).__name__} has task {source.task!r}; CaptionInstructDataModule needs a "
                             "captioning datamodule (task='caption')")
        self.source = source
        self.instructions = tuple(instructions) if instructions else CAPTION_INSTRUCTIONS
        self.name = f"{source.name}-instruct"
        self.splits = dict(source.splits)

    def load_samples(self, split: str) -> list[Sample]:
        return captions_to_instructions(self.source.load_samples(split), self.instructions, seed=0)

    # media are the source's: decoding, frame sampling and what the model connects
    @property
    def sampled_media(self) -> bool:  # type: ignore[override]
        return self.source.sampled_media

    def load_media(self, *args: Any) -> Any:
        return self.source.load_media(*args)

    def media_config(self, stage: str) -> dict[str, Any]:
        """The source's decoding; the transform around the encoder is this datamodule's ``augment``."""
        decoding = {k: v for k, v in self.source.media_config(stage).items() if k != "augment"}
        return {**decoding, **self.augment_config(stage)}

    def random_augmentation(self, stage: str) -> str | None:
        reasons = (self.augment_reason(stage), self.source.frame_sampling_reason(stage))
        return "; ".join(r for r in reasons if r) or None

    def connect(self, model: Any) -> None:
        self.source.connect(model)
        super().connect(model)

    def eval_limit(self, stage: str) -> int | None:
        return self.source.eval_limit(stage)
