"""Multiple choice by option likelihood (Garg & Bas 2023: multiple-choice questions "scored by option
likelihood or by a generated letter"): the chosen option is the one whose answer tokens have the
highest total log-likelihood under the model, given the same prompt (image included) the
generation sees. Uses only the model's public ``forward(media, input_ids, attention_mask, instruction=,
blind=)`` (and its ``media_position`` keyword when the batch has one) and ``tokenizer``: the prompt is the
instruction an instruction-aware head reads, as in generation, and ``blind`` scores the blind baseline
(perception zeroed). Batches are :class:`~perceptlm.batch.Batch` records, read by attribute.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from perceptlm.batch import Batch


def take_media(media: Any, index: Tensor) -> Any:
    """Rows ``index`` of a media batch (a tensor, a dict of tensors, PerceptualFeatures or a list)."""
    if isinstance(media, Tensor):
        return media[index.to(media.device)]
    if isinstance(media, dict):
        return {k: take_media(v, index) for k, v in media.items()}
    if dataclasses.is_dataclass(media):
        fields = {f.name: getattr(media, f.name) for f in dataclasses.fields(media)}
        return type(media)(**{k: take_media(v, index) if isinstance(v, Tensor) else v for k, v in fields.items()})
    if isinstance(media, (list, tuple)):
        return [media[int(i)] for i in index]
    raise TypeError(f"cannot select rows of media of type {type(media).__name__}")


def option_loglikelihood_choice(model: Any, batch: Batch, max_logits: int = 2**26,
                                blind: bool = False) -> list[int | None]:
    """Per sample, the index of the option with the highest total log-likelihood (first on ties),
    or None for a sample without options (arguments: :func:`option_loglikelihoods`)."""
    return [max(range(len(s)), key=lambda k: (s[k], -k)) if s else None
            for s in option_loglikelihoods(model, batch, max_logits, blind)]


@torch.no_grad()
def option_loglikelihoods(model: Any, batch: Batch, max_logits: int = 2**26,
                          blind: bool = False) -> list[list[float]]:
    """Per sample, each option's total log-likelihood (an empty list for a sample without options);
    ``blind``: with the perceptual tokens zeroed.

    ``batch``: an evaluation :class:`~perceptlm.batch.Batch` of the instruction collator with
    ``media``, left-padded ``prompt_ids`` / ``prompt_mask`` and ``option_ids`` (per sample, each
    option's answer token ids). Each (sample, option) pair is the prompt followed by the option's
    tokens (right-padded); pairs run in chunks of at most ``max_logits`` logit entries."""
    if batch.option_ids is None:
        raise ValueError("option likelihood needs an evaluation batch with option_ids (multiple-choice samples)")
    prompt_ids, prompt_mask = batch.prompt_ids, batch.prompt_mask
    options, device = batch.option_ids, batch.prompt_ids.device
    pairs = [(i, j) for i, sample_options in enumerate(options) for j in range(len(sample_options))]
    for i, j in pairs:
        if not options[i][j]:
            raise ValueError(f"sample {batch.ids[i]}: option {j} has no tokens")
    scores: list[list[float]] = [[0.0] * len(o) for o in options]
    prompt_width = prompt_ids.shape[1]
    longest = max((len(options[i][j]) for i, j in pairs), default=0)
    vocab = len(model.tokenizer) if hasattr(model, "tokenizer") else 1 << 16
    chunk = max(1, max_logits // (vocab * (prompt_width + longest)))
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        rows = torch.tensor([i for i, _ in part], dtype=torch.long)
        width = max(len(options[i][j]) for i, j in part)
        tail = torch.zeros((len(part), width), dtype=torch.long)
        tail_mask = torch.zeros((len(part), width), dtype=torch.long)
        for r, (i, j) in enumerate(part):
            tail[r, : len(options[i][j])] = torch.tensor(options[i][j], dtype=torch.long)
            tail_mask[r, : len(options[i][j])] = 1
        tail, tail_mask = tail.to(device), tail_mask.to(device)
        ids = torch.cat([prompt_ids[rows.to(device)], tail], dim=1)
        mask = torch.cat([prompt_mask[rows.to(device)], tail_mask], dim=1)
        # as in generation: the prompt instructs the head, the prefix goes at the prompt's media position
        where = {"instruction": (prompt_ids[rows.to(device)], prompt_mask[rows.to(device)]), "blind": blind}
        if batch.media_position is not None:
            where["media_position"] = batch.media_position[rows.to(batch.media_position.device)]
        logits = model(take_media(batch.media, rows), ids, mask, **where)
        # position t predicts token t+1: the option's tokens are predicted from prompt_width - 1 on
        predicted = logits[:, prompt_width - 1 : prompt_width - 1 + width].float().log_softmax(-1)
        token_scores = predicted.gather(-1, tail.unsqueeze(-1)).squeeze(-1) * tail_mask
        for r, (i, j) in enumerate(part):
            scores[i][j] = float(token_scores[r].sum())
    return scores
