"""L0 / prefix injection: perceptual tokens prepended to the LLM input and carried through every
layer (DePALM §3.3 "L0"; LiMBeR, MAPL, ClipCap, LLaVA)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import Tensor

from perceptlm.injection.base import Injection
from perceptlm.llm.language_model import LanguageModel


class PrefixInjection(Injection):
    """The visual tokens become the input prefix."""

    def install(self, llm: LanguageModel) -> None:
        """Nothing to attach: the tokens travel with the input embeddings."""

    def prefix(self, visual: Tensor) -> Tensor:
        return visual

    @contextlib.contextmanager
    def context(self, visual: Tensor) -> Iterator[None]:
        yield  # no per-layer state

    def expand(self, num_beams: int) -> None:
        """Nothing to repeat: the prefix is part of the input that beam search repeats."""

    def num_prefix_tokens(self, num_visual_tokens: int) -> int:
        return num_visual_tokens
