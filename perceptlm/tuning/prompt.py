"""Input prompt tuning: N learned tokens prepended to the LLM input (Lester et al. 2021; DePALM
§3.4 "prompt tuning")."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PromptTokens(nn.Module):
    """``num_tokens`` learned embeddings, initialised ~N(0, ``init_std``^2) (DePALM: N(0, 1))."""

    def __init__(self, num_tokens: int, hidden_size: int, init_std: float = 1.0) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.tokens = nn.Parameter(torch.randn(num_tokens, hidden_size) * init_std)

    def forward(self, batch_size: int) -> Tensor:
        return self.tokens.unsqueeze(0).expand(batch_size, -1, -1)
