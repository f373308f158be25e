"""L0 / prefix injection: perceptual tokens prepended to the LLM input and carried through every
layer (DePALM §3.3 "L0"; LiMBeR, MAPL, ClipCap, LLaVA)."""

from __future__ import annotations

from torch import Tensor

from perceptlm.injection.base import Injection


class PrefixInjection(Injection):
    """The visual tokens become the input prefix."""

    def prefix(self, visual: Tensor) -> Tensor:
        return visual
