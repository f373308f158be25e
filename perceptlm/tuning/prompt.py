"""Input prompt tuning: N learned tokens prepended to the LLM input (Lester et al. 2021; DePALM
§3.4 "prompt tuning")."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PromptTokens(nn.Module):
    """``num_tokens`` learned embeddings, initialised at the scale of the LLM's token embeddings."""

    def __init__(self, num_tokens: int, hidden_size: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.tokens = nn.Parameter(torch.randn(num_tokens, hidden_size) * init_std)

    def forward(self, batch_size: int) -> Tensor:
        return self.tokens.unsqueeze(0).expand(batch_size, -1, -1)
