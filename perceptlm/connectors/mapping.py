"""The unified mapping network of DePALM §3.2: optional input Linear -> optional transformer
(QPMapper) -> MLP whose last Linear goes to the LLM width."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from perceptlm.connectors.base import Connector, flatten_layers
from perceptlm.connectors.qpmapper import QPMapper
from perceptlm.encoders.base import PerceptualFeatures


def mlp(in_dim: int, out_dim: int, depth: int, hidden: int | None = None) -> nn.Sequential:
    """``depth`` Linear layers with GELU in between; ``depth=1`` is a single Linear."""
    hidden = hidden or out_dim
    dims = [in_dim] + [hidden] * (depth - 1) + [out_dim]
    modules: list[nn.Module] = []
    for i in range(depth):
        modules.append(nn.Linear(dims[i], dims[i + 1]))
        if i < depth - 1:
            modules.append(nn.GELU())
    return nn.Sequential(*modules)


class MappingConnector(Connector):
    """DePALM's mapper. With ``transformer="qpmapper"`` it yields ``num_queries`` summary tokens
    (QP, L0: Linear(d->d), 2 QPMapper layers, 32 queries, Linear -> LLM width); with
    ``transformer="encoder"`` the same layers run over the tokens alone and every token is kept
    (DePALM c-attn's 1-layer transformer); with ``transformer=None`` it maps every token (LiMBeR: a
    per-token Linear).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int | None = None,
        input_projection: bool = True,
        transformer: Literal["qpmapper", "encoder"] | None = "qpmapper",
        num_queries: int = 32,
        num_layers: int = 2,
        num_heads: int = 8,
        dropout: float = 0.1,
        output_depth: int = 1,
    ) -> None:
        super().__init__()
        width = width or in_dim
        if not input_projection and width != in_dim:
            raise ValueError(f"width={width} differs from the feature width {in_dim}: enable input_projection")
        self.in_dim, self.out_dim, self.width = in_dim, out_dim, width
        self.input = nn.Linear(in_dim, width) if input_projection else nn.Identity()
        if transformer == "qpmapper":
            self.transformer: QPMapper | None = QPMapper(
                width, num_queries=num_queries, num_layers=num_layers, num_heads=num_heads, dropout=dropout
            )
        elif transformer == "encoder":  # the same post-norm layers over the tokens alone, no queries
            self.transformer = QPMapper(width, num_queries=0, num_layers=num_layers, num_heads=num_heads, dropout=dropout)
        elif transformer is None:
            self.transformer = None
        else:
            raise ValueError(f"transformer={transformer!r} is unknown; valid: 'qpmapper', 'encoder', None")
        self.output = mlp(width, out_dim, output_depth)

    def num_output_tokens(
        self, num_tokens: int, grid: tuple[int, int] | None = None, has_cls: bool = True, num_layers: int = 1
    ) -> int:
        if self.transformer is None or self.transformer.num_queries == 0:
            return num_tokens
        return self.transformer.num_queries

    def forward(self, features: PerceptualFeatures) -> Tensor:
        tokens, mask = flatten_layers(features)
        hidden = self.input(tokens)
        if self.transformer is not None:
            hidden = self.transformer(hidden, mask)
        return self.output(hidden)
