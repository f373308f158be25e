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

from torch import Tensor, nn

from perceptlm.llm.language_model import LanguageModel


class Injection(nn.Module, metaclass=abc.ABCMeta):
    """How the connector's tokens reach the LLM. Constructed as ``cls(**options)`` (a preset's
    ``injection_options``), then :meth:`install`-ed once on the LLM.

    ``per_encoder_layer``: the connector maps each selected encoder layer separately and the
    injection receives ``[B, layers, K, H]`` (else ``[B, K, H]``).
    """

    per_encoder_layer: bool = False

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

    def num_perceptual_tokens(self, connector_tokens: int) -> int:
        """The perceptual tokens the LLM receives (per target layer for per-layer injections) when
        the connector yields ``connector_tokens``: those tokens, unless the injection turns them
        into others (LLaMA-Adapter's adaption prompts)."""
        return connector_tokens
