"""Prompt templates and the collator that turns samples into a :class:`~perceptlm.batch.Batch`.

Training batches are right-padded ``prompt + target + EOS`` with labels on the target and EOS only.
Evaluation batches carry left-padded prompts (for batched generation) and the references.
:class:`Collator` is the one skeleton: it drops the samples whose media failed to load, stacks the
media, tokenises each sample into a row (:meth:`Collator.train_row`, :meth:`Collator.prompt_row`,
which the instruction collator overrides with its chat template) and pads the rows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from perceptlm.batch import Batch

DEFAULT_TEMPLATES = {
    # DePALM's VQA prompt as its code builds it: the instruction "{prompt}\n\nAnswer:\n" is stripped,
    # then a space follows its last character
    "vqa": "{question}\n\nAnswer: ",
    "caption": "",  # DePALM captions with an empty prompt
}


@dataclass
class Sample:
    """One dataset record, before tokenisation."""

    id: str
    media: Any
    prompt: str
    targets: list[str]  # training picks one; evaluation scores against all
    extra: dict[str, Any] = field(default_factory=dict)


def _pad(sequences: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if not seq:
            continue
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


class Collator:
    """Tokenises a list of :class:`Sample` into a :class:`~perceptlm.batch.Batch` for training
    (``train=True``) or evaluation.

    Samples without media (a file that failed to load) are left out and listed in ``skipped``.
    ``meta`` is set when the samples carry ``extra["meta"]`` (per-sample scoring facts), and
    ``media_position`` when their rows place the media (instruction samples)."""

    def __init__(
        self,
        tokenizer: Any,
        task: str,
        train: bool,
        stack_media: Callable[[list[Any]], Any] | None = None,
        max_length: int = 256,
        seed: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.task = task
        self.train = train
        self.stack_media = stack_media or torch.stack
        self.max_length = max_length
        self.seed, self.epoch = seed, 0
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    def set_epoch(self, epoch: int) -> None:
        """The training epoch, for :meth:`pick` (the training loader sets it)."""
        self.epoch = epoch

    def pick(self, sample: Sample) -> int:
        """Which of a sample's targets it trains on: drawn from (seed, epoch, sample id) alone, so
        the choice does not depend on batch order, loader workers or an interrupted-and-resumed run."""
        if len(sample.targets) < 2:
            return 0
        key = zlib.crc32(str(sample.id).encode())
        return int(np.random.default_rng((self.seed, self.epoch, key)).integers(len(sample.targets)))

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _prompt_ids(self, prompt: str) -> list[int]:
        bos = self.tokenizer.bos_token_id
        add_bos = bos is not None and getattr(self.tokenizer, "add_bos_token", False)
        return ([bos] if add_bos else []) + self._ids(prompt)

    # -- one sample -> one row (overridden by the instruction collator) ----------------------------
    def train_row(self, sample: Sample) -> tuple[list[int], list[int], int | None]:
        """``(input ids, labels, media position or None)`` of a training sample, at most
        ``max_length`` tokens: the prompt, then the picked target and EOS (the labelled part)."""
        prompt = self._prompt_ids(sample.prompt)
        target = self._ids(sample.targets[self.pick(sample)]) + [self.eos]
        return (prompt + target)[: self.max_length], ([-100] * len(prompt) + target)[: self.max_length], None

    def prompt_row(self, sample: Sample) -> tuple[list[int], int | None]:
        """``(prompt ids, media position or None)`` of an evaluation sample, its last ``max_length``
        tokens."""
        return self._prompt_ids(sample.prompt)[-self.max_length :], None

    def add_eval_fields(self, batch: Batch, samples: list[Sample]) -> None:
        """Evaluation fields beyond the prompt and references (none here)."""

    # -- the skeleton ------------------------------------------------------------------------------
    def __call__(self, samples: list[Sample]) -> Batch:
        skipped = [(s.id, s.extra.get("skipped", "no media")) for s in samples if s.media is None]
        has_meta = any("meta" in s.extra for s in samples)
        samples = [s for s in samples if s.media is not None]
        batch = Batch(
            ids=[s.id for s in samples], task=self.task,
            media=self.stack_media([s.media for s in samples]) if samples else None,
            prompts=[s.prompt for s in samples], sources=[s.extra.get("source") for s in samples], skipped=skipped,
            meta=[dict(s.extra.get("meta") or {}) for s in samples] if has_meta else None,
        )
        if self.train:
            rows = [self.train_row(s) for s in samples]
            batch.input_ids, batch.attention_mask = _pad([r[0] for r in rows], self.pad, left=False)
            batch.labels, _ = _pad([r[1] for r in rows], -100, left=False)
            positions = [r[2] for r in rows]
        else:
            rows = [self.prompt_row(s) for s in samples]
            batch.prompt_ids, batch.prompt_mask = _pad([r[0] for r in rows], self.pad, left=True)
            width = batch.prompt_ids.shape[1]  # left padding shifts each row's media position
            positions = [None if p is None else p + width - len(ids) for ids, p in rows]
            batch.references = [s.targets for s in samples]
            self.add_eval_fields(batch, samples)
        if positions and all(p is not None for p in positions):
            batch.media_position = torch.tensor(positions, dtype=torch.long)
        return batch
