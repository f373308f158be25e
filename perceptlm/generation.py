"""Batched, KV-cached greedy and beam-search decoding with injected perception.

The caller prefills once with the full input (prefix tokens, left-padded text); every decoded token
then attends to the cached keys/values, so the perception stays visible without being recomputed.
Positions come from the attention mask, so a left-padded sample decodes exactly as it would alone.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from perceptlm.llm.language_model import LanguageModel

# step(inputs_embeds [B, T, H], attention_mask [B, T_total], cache) -> (last logits [B, V], cache)
StepFn = Callable[[Tensor, Tensor, object], tuple[Tensor, object]]


def make_step(llm: LanguageModel) -> StepFn:
    """A decoding step over ``llm``: logits of the last position only."""

    def step(inputs_embeds: Tensor, attention_mask: Tensor, cache: object) -> tuple[Tensor, object]:
        hidden, cache = llm.hidden(inputs_embeds, attention_mask, past_key_values=cache, use_cache=True)
        return llm.logits(hidden[:, -1]).float(), cache

    return step


def stop_string_criterion(tokenizer: Any, stop_strings: Sequence[str]) -> Callable[[Tensor], Tensor]:
    """``generated [B, t] -> bool [B]``: True where the decoded text contains a stop string."""

    def check(generated: Tensor) -> Tensor:
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in stop_strings) for t in texts], device=generated.device)

    return check


def truncate_at_stop(text: str, stop_strings: Sequence[str] | None) -> str:
    """Cut ``text`` before the first stop string it contains."""
    for stop in stop_strings or ():
        index = text.find(stop)
        if index >= 0:
            text = text[:index]
    return text


def _stop_ids(eos_token_id: int | Sequence[int] | None) -> Tensor:
    if eos_token_id is None:
        return torch.empty(0, dtype=torch.long)
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def greedy(
    llm: LanguageModel,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    step: StepFn | None = None,
    stop: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Greedy decoding. Returns new token ids ``[B, <=max_new_tokens]``, padded after EOS.
    ``stop(generated) -> bool [B]`` ends a sequence early (stop strings)."""
    step = step or make_step(llm)
    batch = inputs_embeds.shape[0]
    device = inputs_embeds.device
    stops = _stop_ids(eos_token_id).to(device)
    logits, cache = step(inputs_embeds, attention_mask, None)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    out: list[Tensor] = []
    for _ in range(max_new_tokens):
        token = logits.argmax(-1)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        out.append(token)
        finished |= torch.isin(token, stops)
        if stop is not None:
            finished |= stop(torch.stack(out, dim=1))
        if bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        logits, cache = step(llm.embed(token[:, None]), attention_mask, cache)
    if not out:
        return torch.empty(batch, 0, dtype=torch.long, device=device)
    return torch.stack(out, dim=1)


@torch.no_grad()
def beam_search(
    llm: LanguageModel,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    num_beams: int,
    length_penalty: float = 1.0,
    step: StepFn | None = None,
    expand: Callable[[int], None] | None = None,
) -> Tensor:
    """Beam search (sum of log-probabilities / length**length_penalty, as transformers scores
    finished hypotheses). ``expand(num_beams)`` lets per-layer injections repeat their context.
    Returns the best hypothesis per sample ``[B, <=max_new_tokens]``."""
    step = step or make_step(llm)
    batch, device = inputs_embeds.shape[0], inputs_embeds.device
    stops = _stop_ids(eos_token_id).to(device)
    if expand is not None:
        expand(num_beams)
    inputs_embeds = inputs_embeds.repeat_interleave(num_beams, dim=0)
    attention_mask = attention_mask.repeat_interleave(num_beams, dim=0)
    logits, cache = step(inputs_embeds, attention_mask, None)
    scores = torch.zeros(batch, num_beams, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one
    sequences = torch.empty(batch * num_beams, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, Tensor]]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool)
    for length in range(1, max_new_tokens + 1):
        logprobs = torch.log_softmax(logits, dim=-1)
        vocab = logprobs.shape[-1]
        candidates = (scores.view(-1, 1) + logprobs).view(batch, num_beams * vocab)
        top_scores, top_index = candidates.topk(2 * num_beams, dim=-1)
        next_scores = torch.full((batch, num_beams), float("-inf"), device=device)
        next_beam = torch.zeros(batch, num_beams, dtype=torch.long, device=device)
        next_token = torch.full((batch, num_beams), pad_token_id, dtype=torch.long, device=device)
        for b in range(batch):
            if done[b]:
                next_beam[b] = torch.arange(num_beams, device=device)
                continue
            kept = 0
            for score, index in zip(top_scores[b].tolist(), top_index[b].tolist()):
                beam, token = divmod(index, vocab)
                if score == float("-inf"):
                    break
                if bool(torch.isin(torch.tensor(token, device=device), stops)):
                    hypothesis = torch.cat([sequences[b * num_beams + beam], sequences.new_tensor([token])])
                    finished[b].append((score / length**length_penalty, hypothesis))
                    continue
                next_scores[b, kept], next_beam[b, kept], next_token[b, kept] = score, beam, token
                kept += 1
                if kept == num_beams:
                    break
            if len(finished[b]) >= num_beams:
                best_running = next_scores[b].max().item() / length**length_penalty
                worst_kept = sorted(s for s, _ in finished[b])[-num_beams]
                done[b] = best_running <= worst_kept
        if bool(done.all()):
            break
        origin = (next_beam + torch.arange(batch, device=device)[:, None] * num_beams).view(-1)
        sequences = torch.cat([sequences[origin], next_token.view(-1, 1)], dim=1)
        scores = next_scores
        if length == max_new_tokens:
            break
        cache.reorder_cache(origin)
        attention_mask = torch.cat([attention_mask[origin], attention_mask.new_ones(origin.shape[0], 1)], dim=1)
        logits, cache = step(llm.embed(next_token.view(-1, 1)), attention_mask, cache)
    results = []
    for b in range(batch):
        if not finished[b] or not bool(done[b]):
            for beam in range(num_beams):
                if scores[b, beam] > float("-inf"):
                    seq = sequences[b * num_beams + beam]
                    finished[b].append((scores[b, beam].item() / max(seq.shape[0], 1) ** length_penalty, seq))
        results.append(max(finished[b], key=lambda item: item[0])[1])
    width = max((r.shape[0] for r in results), default=0)
    out = torch.full((batch, width), pad_token_id, dtype=torch.long, device=device)
    for b, seq in enumerate(results):
        out[b, : seq.shape[0]] = seq
    return out
