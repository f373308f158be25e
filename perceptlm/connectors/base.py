"""The connector contract: a trainable mapper from :class:`PerceptualFeatures` to LLM-width tokens.

A new connector is a subclass in its own file, one line in :data:`perceptlm.connectors.CONNECTORS`,
a preset file that names it and its test. :class:`Connector` is abstract: a subclass that leaves
out :meth:`~Connector.forward` or :meth:`~Connector.num_output_tokens` fails at construction.
"""

from __future__ import annotations

import abc

from torch import Tensor, nn

from perceptlm.encoders.base import PerceptualFeatures


class Connector(nn.Module, metaclass=abc.ABCMeta):
    """Trainable mapper from :class:`PerceptualFeatures` to LLM-width tokens ``[B, K, out_dim]``.

    Pure PyTorch: it knows nothing of the LLM beyond ``out_dim``. Constructed as
    ``cls(in_dim, out_dim, **arguments)`` (the arguments come from a preset's ``connector``).
    ``reads_instruction``: :meth:`forward` also takes ``instruction=(embeddings [B, T, out_dim],
    mask [B, T])``, the instruction text embedded by the LLM (InstructBLIP's instruction-aware
    Q-Former); False for connectors that see the media alone.
    """

    in_dim: int
    out_dim: int
    reads_instruction: bool = False

    @abc.abstractmethod
    def num_output_tokens(
        self, num_tokens: int, grid: tuple[int, int] | None = None, has_cls: bool = True, num_layers: int = 1
    ) -> int:
        """Tokens produced at evaluation for ``num_tokens`` input tokens (all selected layers
        together); ``grid``: the patch grid (None for 1-D sequences or CLS only), ``has_cls``: whether
        the features hold a CLS token, ``num_layers``: selected encoder layers."""

    @abc.abstractmethod
    def forward(self, features: PerceptualFeatures) -> Tensor:
        """``[B, K, out_dim]`` tokens for ``features``."""


def flatten_layers(features: PerceptualFeatures) -> tuple[Tensor, Tensor]:
    """``[B, L, N, D]`` -> tokens ``[B, L*N, D]`` (layer-major) and their mask ``[B, L*N]``."""
    batch, layers, count, dim = features.tokens.shape
    tokens = features.tokens.reshape(batch, layers * count, dim)
    mask = features.mask.repeat(1, layers)
    return tokens, mask
