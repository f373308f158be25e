"""The injection contract: how perceptual tokens enter the LLM.

An :class:`Injection` either contributes tokens to the input prefix (L0) or installs itself on the
LLM's decoder layers through public extension points (module hooks, transformers' attention
registry) and reads the perceptual tokens of the current batch from :meth:`Injection.context`.
:class:`Injection` is abstract: a subclass that leaves out one of its methods fails at construction.
A new injection is its file + one line in :data:`perceptlm.injection.INJECTIONS` + its test.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any, Iterator, Sequence

from torch import Tensor, nn

from perceptlm.llm.language_model import LanguageModel


class Injection(nn.Module, metaclass=abc.ABCMeta):
    """How the connector's tokens reach the LLM. Constructed as ``cls(**options)`` (a preset's
    ``injection_options``), then :meth:`install`-ed once on the LLM.

    ``per_encoder_layer``: the connector maps each selected encoder layer separately and the
    injection receives ``[B, layers, K, H]`` (else ``[B, K, H]``).
    """

    per_encoder_layer: bool = False
    compilable: bool = True  # whether the LLM's decoder layers may be compiled with it installed (compile_llm)

    @abc.abstractmethod
    def install(self, llm: LanguageModel) -> None:
        """Attach to ``llm`` once, at construction (hooks, wrappers; nothing for a prefix)."""

    @abc.abstractmethod
    def prefix(self, visual: Tensor) -> Tensor | None:
        """Tokens ``[B, K, H]`` to place before the text at the LLM input, or None."""

    @abc.abstractmethod
    def context(self, visual: Tensor) -> contextlib.AbstractContextManager[None]:
        """Make ``visual`` visible to per-layer hooks during a forward (or a whole generation)."""

    @abc.abstractmethod
    def expand(self, num_beams: int) -> None:
        """Beam search repeats each sample ``num_beams`` times; repeat any per-sample state."""

    @abc.abstractmethod
    def num_prefix_tokens(self, num_visual_tokens: int) -> int:
        """How many of ``num_visual_tokens`` perceptual tokens this injection places at the LLM
        input (all for a prefix, 0 for per-layer injections)."""

    def replay(self) -> contextlib.AbstractContextManager[None]:
        """A context that restores, later, the state a layer sees now: activation checkpointing
        recomputes a decoder layer in the backward pass, after :meth:`context` has exited, and the
        recomputation must see the same perceptual tokens. Injections that keep the tokens in
        ``_visual`` are served here; one with other per-forward state overrides it."""
        visual = getattr(self, "_visual", None)
        return self.context(visual) if visual is not None else contextlib.nullcontext()

    def token_width(self, llm_hidden: int) -> int:
        """The width of the tokens this injection takes from the connector: the LLM's hidden size,
        unless the injection maps them itself (DePALM c-attn's 1024-wide cross-attention)."""
        return llm_hidden

    def num_perceptual_tokens(self, connector_tokens: int) -> int:
        """The perceptual tokens the LLM receives (per target layer for per-layer injections) when
        the connector yields ``connector_tokens``: those tokens, unless the injection turns them
        into others (LLaMA-Adapter's adaption prompts)."""
        return connector_tokens


class PerLayerInjection(Injection):
    """An injection that acts inside chosen LLM layers on the tokens of each selected encoder layer
    (``[B, encoder layers, K, width]``, the connector run once per encoder layer), nothing at the
    input. :meth:`context` holds the tokens and a per-forward cache (:attr:`cache`: what a layer
    derives from them, computed once per forward or generation, not per decoding step)."""

    per_encoder_layer = True

    def __init__(self) -> None:
        super().__init__()
        self._visual: Tensor | None = None
        self.cache: dict[Any, Any] = {}

    def prefix(self, visual: Tensor) -> None:
        return None  # the tokens reach the LLM inside the target layers only

    def num_prefix_tokens(self, num_visual_tokens: int) -> int:
        return 0

    @contextlib.contextmanager
    def context(self, visual: Tensor) -> Iterator[None]:
        if visual.dim() != 4:
            raise ValueError(f"{type(self).__name__} takes tokens [B, encoder layers, K, width], "
                             f"got shape {tuple(visual.shape)}")
        previous = self._visual, self.cache
        self._visual, self.cache = visual, {}
        try:
            yield
        finally:
            self._visual, self.cache = previous

    def expand(self, num_beams: int) -> None:
        """Beam search repeats every sample ``num_beams`` times: repeat the perceptual tokens too."""
        if self._visual is not None:
            self._visual = self._visual.repeat_interleave(num_beams, dim=0)
            self.cache = {}

    def encoder_layer(self, slot: int, targets: int) -> Tensor:
        """The tokens ``[B, K, width]`` for target layer ``slot`` of ``targets``: the encoder layers are
        spread over the target layers in proportion (DePALM: 4 encoder layers -> 12 LLM layers, 3 each)."""
        return self._visual[:, slot * self._visual.shape[1] // targets]


def target_layers(depth: int, layers: Sequence[int] | None = None, start: float = 0.5, end: float = 0.875,
                  every: int = 1, last: int | None = None, count: int | None = None) -> list[int]:
    """The 0-based LLM layers a per-layer injection targets, by the first of:

    - ``layers``: explicit indices (negative ones count from the end), validated against ``depth``;
    - ``last`` and ``count``: ``count`` consecutive layers ending at ``last`` included, DePALM's
      ``target.to_idx`` / ``n_elements`` (``last=-4, count=12`` on 32 layers: 17-28; eP-ALM's
      ``last=-4, count=6``: 23-28);
    - every ``every``-th layer of ``[start*depth, end*depth)`` (Flamingo: the whole depth, every 4th).
    """
    if layers is not None:
        bad = [i for i in layers if not -depth <= i < depth]
        if bad:
            raise ValueError(f"target layers {bad} are beyond the LLM's depth {depth}; valid: 0..{depth - 1}")
        return sorted({i % depth for i in layers})
    if last is not None or count is not None:
        if last is None or count is None or count < 1 or not -depth <= last < depth:
            raise ValueError(f"need both last (in {-depth}..{depth - 1}) and count >= 1; got last={last}, count={count}")
        final = last % depth
        if final - count + 1 < 0:
            raise ValueError(f"{count} layers ending at layer {final} do not fit in the LLM's {depth} layers")
        return list(range(final - count + 1, final + 1))
    if not 0 <= start < end <= 1 or every < 1:
        raise ValueError(f"need 0 <= start < end <= 1 and every >= 1; got start={start}, end={end}, every={every}")
    first, final = int(start * depth), max(int(start * depth) + 1, int(round(end * depth)))
    return list(range(first, min(final, depth), every))
