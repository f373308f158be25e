"""ClipCap (Mokady, Hu, Bermano 2021, "ClipCap: CLIP Prefix for Image Captioning", §3.1-3.2): one
global image embedding mapped to a prefix of ``prefix_length`` LLM tokens.

ClipCap's released code normalises the CLIP embedding differently at training and test time; here
the optional L2 normalisation (``normalize``) is one function applied identically in both modes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceptlm.connectors.base import Connector
from perceptlm.encoders.base import PerceptualFeatures


def global_embedding(features: PerceptualFeatures) -> Tensor:
    """``[B, D]``: the CLS token of the last selected layer, or the masked mean of its tokens when
    the features have no CLS (e.g. audio)."""
    last = features.tokens[:, -1]
    if features.cls_index is not None:
        return last[:, features.cls_index]
    weights = features.mask.unsqueeze(-1).to(last.dtype)
    return (last * weights).sum(1) / weights.sum(1).clamp(min=1)


class ClipCapConnector(Connector):
    """Global embedding -> ``prefix_length`` tokens.

    ``mapping="mlp"`` (ClipCap §3.1, GPT-2 fine-tuned variant): Linear(D -> kH/2) -> Tanh ->
    Linear(kH/2 -> kH), reshaped to ``k`` tokens (``hidden`` overrides kH/2).
    ``mapping="transformer"`` (ClipCap §3.2, frozen-LM variant): Linear(D -> ``clip_length`` x H)
    tokens followed by ``k`` learned constants, through ``num_layers`` pre-norm transformer layers
    (8 heads, FFN 2H, ReLU); the outputs at the constants are the prefix.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        prefix_length: int = 10,
        mapping: Literal["mlp", "transformer"] = "mlp",
        hidden: int | None = None,
        clip_length: int = 10,
        num_layers: int = 8,
        num_heads: int = 8,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.prefix_length = in_dim, out_dim, prefix_length
        self.mapping, self.normalize, self.clip_length = mapping, normalize, clip_length
        if mapping == "mlp":
            hidden = hidden or prefix_length * out_dim // 2
            self.mlp = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, prefix_length * out_dim)
            )
        elif mapping == "transformer":
            if out_dim % num_heads:
                raise ValueError(f"ClipCap transformer: LLM width {out_dim} must be divisible by num_heads={num_heads}")
            self.input = nn.Linear(in_dim, clip_length * out_dim)
            self.constants = nn.Parameter(torch.randn(prefix_length, out_dim))
            layer = nn.TransformerEncoderLayer(
                out_dim, num_heads, dim_feedforward=2 * out_dim, dropout=0.0, activation="relu",
                batch_first=True, norm_first=True,
            )
            self.transformer = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        else:
            raise ValueError(f"ClipCap mapping={mapping!r} is unknown; valid: 'mlp', 'transformer'")

    def num_output_tokens(
        self, num_tokens: int, grid: tuple[int, int] | None = None, has_cls: bool = True, num_layers: int = 1
    ) -> int:
        return self.prefix_length

    def forward(self, features: PerceptualFeatures) -> Tensor:
        embedding = global_embedding(features)
        if self.normalize:
            embedding = F.normalize(embedding, dim=-1)
        batch = embedding.shape[0]
        if self.mapping == "mlp":
            return self.mlp(embedding).reshape(batch, self.prefix_length, self.out_dim)
        clip = self.input(embedding).reshape(batch, self.clip_length, self.out_dim)
        constants = self.constants.unsqueeze(0).expand(batch, -1, -1).to(clip.dtype)
        return self.transformer(torch.cat([clip, constants], dim=1))[:, self.clip_length :]
