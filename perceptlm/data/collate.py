"""Prompt templates and the collator that turns samples into LLM batches.

Training batches are right-padded ``prompt + target + EOS`` with labels on the target and EOS only.
Evaluation batches carry left-padded prompts (for batched generation) and the references.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

DEFAULT_TEMPLATES = {
    "vqa": "{question}\n\nAnswer:\n",  # DePALM's VQA prompt
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
    """Tokenises a list of :class:`Sample` for training (``train=True``) or evaluation."""

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

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        skipped = [(s.id, s.extra.get("skipped", "no media")) for s in samples if s.media is None]
        samples = [s for s in samples if s.media is not None]
        batch: dict[str, Any] = {"ids": [s.id for s in samples], "task": self.task, "skipped": skipped,
                                 "prompts": [s.prompt for s in samples],
                                 "sources": [s.extra.get("source") for s in samples]}
        batch["media"] = self.stack_media([s.media for s in samples]) if samples else None
        prompts = [self._prompt_ids(s.prompt) for s in samples]
        if self.train:
            sequences, labels = [], []
            for sample, prompt in zip(samples, prompts):
                target = self._ids(sample.targets[self.pick(sample)]) + [self.eos]
                sequence = (prompt + target)[: self.max_length]
                sequences.append(sequence)
                labels.append(([-100] * len(prompt) + target)[: self.max_length])
            ids, mask = _pad(sequences, self.pad, left=False)
            label_ids, _ = _pad(labels, -100, left=False)
            batch.update(input_ids=ids, attention_mask=mask, labels=label_ids)
        else:
            ids, mask = _pad([p[-self.max_length :] for p in prompts], self.pad, left=True)
            batch.update(prompt_ids=ids, prompt_mask=mask, references=[s.targets for s in samples])
        return batch
