"""How perceptual tokens enter the LLM.

An :class:`Injection` either contributes tokens to the input prefix (L0) or installs itself on the
LLM's decoder layers through public extension points (module hooks) and reads the perceptual
tokens of the current batch from :meth:`Injection.context`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import Tensor, nn

from perceptlm.llm.language_model import LanguageModel


class Injection(nn.Module):
    """Base class: no prefix tokens, no per-layer state. ``per_encoder_layer``: the connector maps
    each selected encoder layer separately and the injection receives ``[B, layers, K, H]``."""

    per_encoder_layer = False

    def install(self, llm: LanguageModel) -> None:
        """Attach to ``llm`` once, at construction (hooks, wrappers). Default: nothing."""

    def prefix(self, visual: Tensor) -> Tensor | None:
        """Tokens ``[B, K, H]`` to place before the text at the LLM input, or None."""
        return None

    @contextlib.contextmanager
    def context(self, visual: Tensor) -> Iterator[None]:
        """Make ``visual`` visible to per-layer hooks during a forward (or a whole generation)."""
        yield

    def expand(self, num_beams: int) -> None:
        """Beam search repeats each sample ``num_beams`` times; repeat any per-sample state."""
