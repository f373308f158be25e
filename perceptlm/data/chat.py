"""Chat templates for instruction tuning (LLaVA, Liu et al. 2023; Garg & Bas 2023 §2: "each checkpoint
uses its own chat template").

A conversation is a list of ``(role, text)`` turns, role ``"human"`` or ``"gpt"`` (the LLaVA JSON
roles). A template renders it into :class:`Piece` s: unsupervised text (system prompt, role headers,
human turns) and, for each assistant turn, its text and its end-of-turn marker, both supervised. A
conversation that ends with a human turn renders up to the generation prompt (evaluation).

Templates:

* ``tokenizer``: the tokenizer's own ``chat_template`` through ``apply_chat_template``; assistant
  spans are found by rendering the conversation turn by turn, and the end-of-turn is the special
  token that closes the assistant message (``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ...).
* ``vicuna_v1``: LLaVA's ``conv_vicuna_v1``: ``"{system} USER: {q} ASSISTANT: {a}</s>USER: ..."``
  with the tokenizer's EOS as ``</s>``.
* ``llava_v0``: LLaVA's ``conv_llava_v0``: ``"{system}###Human: {q}###Assistant: {a}###..."``; the
  end-of-turn is ``"###"`` (not EOS): generate with ``stop_strings: ["###"]``.
* ``plain``: LLaVA's alignment-stage format: the human turn is reduced to the image (its text is
  dropped), then the answer and EOS (LLaVA ends with ``"\\n"``; EOS here so that generation stops
  without a stop string). Single exchange only.
* ``auto``: ``tokenizer`` when the tokenizer has a chat template, else ``vicuna_v1``.

:func:`encode` tokenises pieces into ``input_ids`` / ``labels`` (-100 outside assistant turns) and
removes the ``<image>`` placeholder, returning where it was as a token index (``media_position``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE = "<image>"
HUMAN, GPT = "human", "gpt"

_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_LLAVA_V0_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the human's questions.")


@dataclass(frozen=True)
class Piece:
    """A span of rendered text: ``kind`` is ``"prompt"`` (no loss), ``"answer"`` or ``"end"``
    (an assistant turn's text and its end-of-turn marker: both supervised)."""

    text: str
    kind: str = "prompt"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    kinds: list[str]  # per token: prompt | answer | end
    media_position: int  # token index where the perception goes (0 when the text has no placeholder)


def _check_turns(turns: list[tuple[str, str]]) -> None:
    if not turns or turns[0][0] != HUMAN:
        raise ValueError(f"a conversation starts with a {HUMAN!r} turn; got {[r for r, _ in turns][:3]}")
    for k, (role, _) in enumerate(turns):
        expected = HUMAN if k % 2 == 0 else GPT
        if role != expected:
            raise ValueError(f"turn {k} has role {role!r}; turns alternate {HUMAN!r}/{GPT!r}")


class NamedTemplate:
    """One of LLaVA's conversation templates (``llava/conversation.py``), by name."""

    def __init__(self, name: str, tokenizer: Any, system: str | None = None) -> None:
        if name not in NAMED_TEMPLATES:
            raise ValueError(f"unknown chat template {name!r}; valid: {sorted(NAMED_TEMPLATES)}, 'tokenizer', 'auto'")
        self.name = name
        self.eos = tokenizer.eos_token
        if self.eos is None:
            raise ValueError(f"chat template {name!r} needs a tokenizer with an EOS token")
        self.system = NAMED_TEMPLATES[name] if system is None else system
        self.stop = "###" if name == "llava_v0" else None

    def pieces(self, turns: list[tuple[str, str]]) -> list[Piece]:
        _check_turns(turns)
        out: list[Piece] = []
        if self.name == "plain":
            if len(turns) > 2:
                raise ValueError("the 'plain' template takes one human turn and one answer; "
                                 "use vicuna_v1, llava_v0 or the tokenizer's template for multi-turn data")
            out.append(Piece(IMAGE if IMAGE in turns[0][1] else ""))
            if len(turns) == 2:
                out += [Piece(turns[1][1], "answer"), Piece(self.eos, "end")]
            return out
        if self.name == "vicuna_v1":
            user, assistant, sep, end = "USER", "ASSISTANT", " ", self.eos
            out.append(Piece(self.system + sep))
        else:  # llava_v0
            user, assistant, sep, end = "Human", "Assistant", "###", "###"
            out.append(Piece(self.system + sep))
        for role, text in turns:
            if role == HUMAN:
                out.append(Piece(f"{user}: {text}{sep}"))
            else:
                out += [Piece(f"{assistant}:"), Piece(f" {text}", "answer"), Piece(end, "end")]
        if turns[-1][0] == HUMAN:
            out.append(Piece(f"{assistant}:"))
        return out


NAMED_TEMPLATES = {"vicuna_v1": _VICUNA_SYSTEM, "llava_v0": _LLAVA_V0_SYSTEM, "plain": ""}


def _special_tokens(tokenizer: Any) -> list[str]:
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            tokens.add(added.content)
    return sorted((t for t in tokens if t), key=len, reverse=True)


class TokenizerTemplate:
    """The tokenizer's own ``chat_template`` (transformers ``apply_chat_template``)."""

    name = "tokenizer"
    stop = None

    def __init__(self, tokenizer: Any, system: str | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{type(tokenizer).__name__} has no chat_template; use a named template: "
                             f"{sorted(NAMED_TEMPLATES)}")
        self.tokenizer, self.system = tokenizer, system
        self.specials = _special_tokens(tokenizer)

    def _render(self, turns: list[tuple[str, str]], generation_prompt: bool) -> str:
        messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        messages += [{"role": "user" if r == HUMAN else "assistant", "content": t} for r, t in turns]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _end_of_turn(self, rest: str) -> int:
        """Length of the end-of-turn marker at the start of ``rest``: up to and including the first
        special token (whitespace before it included)."""
        stripped = len(rest) - len(rest.lstrip())
        for special in self.specials:
            if rest.startswith(special, stripped):
                return stripped + len(special)
        raise ValueError(f"the chat template closes an assistant turn with {rest[:30]!r}, which does not start "
                         f"with a special token; use a named template: {sorted(NAMED_TEMPLATES)}")

    def pieces(self, turns: list[tuple[str, str]]) -> list[Piece]:
        _check_turns(turns)
        out: list[Piece] = []
        done = ""
        for k, (role, text) in enumerate(turns):
            if role == HUMAN:
                continue
            prompt = self._render(turns[:k], generation_prompt=True)
            whole = self._render(turns[: k + 1], generation_prompt=False)
            if not prompt.startswith(done) or not whole.startswith(prompt):
                raise ValueError("the tokenizer's chat template does not render conversations incrementally "
                                 f"(turn {k}); use a named template: {sorted(NAMED_TEMPLATES)}")
            turn = whole[len(prompt):]
            content = text.strip()
            start = turn.find(content)
            if not content or start < 0:
                raise ValueError(f"assistant turn {k} ({text[:40]!r}) is empty or not rendered verbatim by the chat template")
            stop = start + len(content)
            end = stop + self._end_of_turn(turn[stop:])
            out += [Piece(prompt[len(done):]), Piece(turn[:stop], "answer"), Piece(turn[stop:end], "end"),
                    Piece(turn[end:])]
            done = whole
        if turns[-1][0] == HUMAN:
            prompt = self._render(turns, generation_prompt=True)
            if not prompt.startswith(done):
                raise ValueError("the tokenizer's chat template does not render conversations incrementally; "
                                 f"use a named template: {sorted(NAMED_TEMPLATES)}")
            out.append(Piece(prompt[len(done):]))
        return [p for p in out if p.text]


def chat_template(name: str, tokenizer: Any, system: str | None = None) -> NamedTemplate | TokenizerTemplate:
    """``auto`` | ``tokenizer`` | a named template (``vicuna_v1``, ``llava_v0``, ``plain``)."""
    if name == "auto":
        name = "tokenizer" if getattr(tokenizer, "chat_template", None) else "vicuna_v1"
    if name == "tokenizer":
        return TokenizerTemplate(tokenizer, system)
    return NamedTemplate(name, tokenizer, system)


def end_of_turn_ids(name: str, tokenizer: Any, system: str | None = None) -> list[int]:
    """The token ids that close an assistant turn in template ``name`` (``[eos]`` for vicuna_v1 and
    plain, ``<|im_end|>`` for ChatML templates, the tokens of "###" for llava_v0): what generation
    should stop at when they differ from the tokenizer's EOS."""
    encoded = encode(chat_template(name, tokenizer, system).pieces([(HUMAN, "Hi"), (GPT, "Hello")]), tokenizer)
    return [token for token, kind in zip(encoded.input_ids, encoded.kinds) if kind == "end"]


def _strip_placeholder(text: str) -> tuple[str, int, int]:
    """``text`` without ``<image>`` and one newline beside it; the cut as (position, removed length)."""
    at = text.find(IMAGE)
    if at < 0:
        return text, -1, 0
    start, end = at, at + len(IMAGE)
    if text.startswith("\n", end):
        end += 1
    elif start > 0 and text[start - 1] == "\n":
        start -= 1
    return text[:start] + text[end:], start, end - start


def encode(pieces: list[Piece], tokenizer: Any) -> Encoded:
    """Token ids and labels of rendered pieces; the ``<image>`` placeholder is cut out and its place
    given as ``media_position`` (the text before and after it are tokenised separately, so the
    position is exact). BOS is prepended when the tokenizer adds one and the text lacks it."""
    text, spans, at = "", [], 0
    for piece in pieces:
        if piece.kind != "prompt" and IMAGE in piece.text:
            raise ValueError(f"{IMAGE} appears in an assistant turn ({piece.text[:40]!r}); it belongs to a human turn")
        spans.append((at, at + len(piece.text), piece.kind))
        text += piece.text
        at += len(piece.text)
    if text.count(IMAGE) > 1:
        raise ValueError(f"a conversation holds {text.count(IMAGE)} {IMAGE} placeholders; one image per record is supported")
    text, cut, removed = _strip_placeholder(text)
    if cut >= 0:
        spans = [(a - removed if a > cut else a, b - removed if b > cut else b, k) for a, b, k in spans]
    supervised = [(a, b, k) for a, b, k in spans if k != "prompt" and b > a]
    ids: list[int] = []
    bos = tokenizer.bos_token
    if bos and getattr(tokenizer, "add_bos_token", False) and not text.startswith(bos):
        ids.append(tokenizer.bos_token_id)
    kinds = ["prompt"] * len(ids)
    media_position = 0
    parts = [(0, text)] if cut < 0 else [(0, text[:cut]), (cut, text[cut:])]
    for index, (offset, part) in enumerate(parts):
        if index == 1:
            media_position = len(ids)
        if not part:
            continue
        encoding = tokenizer(part, add_special_tokens=False, return_offsets_mapping=True)
        for token, (s, e) in zip(encoding["input_ids"], encoding["offset_mapping"]):
            s, e = s + offset, e + offset
            kind = "prompt"
            for a, b, k in supervised:
                if (s < b and e > a) or (s == e and a <= s < b):
                    kind = k
                    break
            ids.append(token)
            kinds.append(kind)
    labels = [t if k != "prompt" else -100 for t, k in zip(ids, kinds)]
    return Encoded(ids, labels, kinds, media_position)
