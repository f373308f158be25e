"""Hugging Face vision transformers as frozen image encoders: ViT (Dosovitskiy et al., ICLR 2021),
CLIP vision tower (Radford et al., ICML 2021), SigLIP vision tower (Zhai et al., ICCV 2023) and
DINOv2 (Oquab et al., TMLR 2024).

Readable layers are the outputs of the transformer blocks (``hidden_states[1:]`` of
``output_hidden_states=True``; the embedding output is not readable). The final norm is the
model's last LayerNorm (``layernorm`` for ViT/DINOv2, ``post_layernorm`` for CLIP/SigLIP).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perceptlm.encoders.base import PerceptualEncoder
from perceptlm.encoders.efficientnet import image_to_tensor

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

# model_type -> (has CLS at index 0, final-norm attribute, default mean, std, resample) when the
# checkpoint ships no preprocessor_config.json. Values follow each model's image processor.
MODEL_TYPES: dict[str, tuple[bool, str, tuple, tuple, str]] = {
    "vit": (True, "layernorm", HALF, HALF, "bilinear"),
    "dinov2": (True, "layernorm", IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
    "clip_vision_model": (True, "post_layernorm", CLIP_MEAN, CLIP_STD, "bicubic"),
    "siglip_vision_model": (False, "post_layernorm", HALF, HALF, "bicubic"),
}
_ALIASES = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def _vision_model_class(model_type: str) -> type:
    import transformers

    names = {"vit": "ViTModel", "dinov2": "Dinov2Model", "clip_vision_model": "CLIPVisionModel",
             "siglip_vision_model": "SiglipVisionModel"}
    return getattr(transformers, names[model_type])


def canonical_model_type(model_type: str) -> str:
    """The supported ``model_type`` behind ``model_type`` or its alias (clip, siglip); an error lists the valid ones."""
    kind = _ALIASES.get(model_type, model_type)
    if kind not in MODEL_TYPES:
        raise ValueError(
            f"hf_vision.py: model_type {model_type!r} is not supported; valid: "
            f"{sorted(MODEL_TYPES) + sorted(_ALIASES)}"
        )
    return kind


def local_processor_config(name_or_dir: str) -> dict:
    """``preprocessor_config.json`` from a local dir or the HF cache (never downloads)."""
    path = Path(name_or_dir) / "preprocessor_config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_dir, "preprocessor_config.json")
        except Exception:  # noqa: BLE001 - an invalid repo id simply has no cached config
            cached = None
        if not isinstance(cached, str):
            return {}
        path = Path(cached)
    return json.loads(path.read_text())


class HFVisionEncoder(PerceptualEncoder):
    """A ``transformers`` vision transformer with per-block readout.

    ``image_size`` overrides the checkpoint's resolution (position embeddings are interpolated);
    DINOv2 checkpoints declare 518 px (37x37 patches), pass 224 for the usual 16x16 grid.
    """

    modality = "image"

    def __init__(
        self,
        model: nn.Module,
        name: str | None = None,
        image_size: int | None = None,
        image_mean: tuple[float, ...] | None = None,
        image_std: tuple[float, ...] | None = None,
        resample: str | None = None,
        **selection: Any,
    ) -> None:
        super().__init__(**selection)
        config = model.config
        self.kind = canonical_model_type(config.model_type)
        has_cls, norm_attr, mean, std, default_resample = MODEL_TYPES[self.kind]
        self.model = model
        self.name = name or getattr(config, "name_or_path", "") or self.kind
        self.norm_attr = norm_attr
        if not hasattr(self._body, norm_attr):
            raise ValueError(f"hf_vision.py: {type(model).__name__} has no final norm {norm_attr!r}")
        self.has_cls = has_cls
        self.embed_dim = config.hidden_size
        self.num_layers = config.num_hidden_layers
        self.image_size = int(image_size or config.image_size)
        patch = config.patch_size
        if self.image_size % patch:
            raise ValueError(f"{self.name}: image_size {self.image_size} is not a multiple of patch {patch}")
        self.grid = (self.image_size // patch, self.image_size // patch)
        self.num_raw_tokens = self.grid[0] * self.grid[1] + int(has_cls)
        self.image_mean = tuple(image_mean or mean)
        self.image_std = tuple(image_std or std)
        self.resample = resample or default_resample
        self.interpolate = self.image_size != config.image_size and self.kind != "dinov2"
        self.setup_selection()

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, image_size: int | None = None,
                        torch_dtype: torch.dtype | None = None, **selection: Any) -> "HFVisionEncoder":
        """Load a ViT / CLIP / SigLIP / DINOv2 checkpoint (hub id or local dir; full CLIP/SigLIP
        checkpoints load only their vision tower). Mean/std/resample come from the checkpoint's
        ``preprocessor_config.json`` when present locally, else the per-model defaults."""
        from transformers import AutoConfig

        name = str(name_or_dir)
        kind = canonical_model_type(AutoConfig.from_pretrained(name).model_type)
        extra: dict[str, Any] = {"add_pooling_layer": False} if kind == "vit" else {}
        if torch_dtype is not None:
            extra["dtype"] = torch_dtype
        model = _vision_model_class(kind).from_pretrained(name, **extra)
        processor = local_processor_config(name)
        return cls(
            model, name=name, image_size=image_size, image_mean=processor.get("image_mean"),
            image_std=processor.get("image_std"), resample=PIL_RESAMPLE.get(processor.get("resample")),
            **selection,
        )

    def hidden_states(self, media: Tensor, layers: list[int]) -> tuple[list[Tensor], Tensor | None]:
        dtype = next(self.model.parameters()).dtype
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
        out = self.model(pixel_values=media.to(dtype), output_hidden_states=True, **kwargs)
        blocks = out.hidden_states[1:]  # drop the embedding output
        if len(blocks) != self.num_layers:
            raise RuntimeError(f"{self.name}: got {len(blocks)} block outputs, expected {self.num_layers}")
        states = [blocks[i] for i in layers]
        if states[0].shape[1] != self.num_raw_tokens:
            raise ValueError(
                f"{self.name}: {states[0].shape[1]} tokens, expected {self.num_raw_tokens} "
                f"(grid {self.grid}, CLS={self.has_cls}); feed {self.image_size}px images (see preprocess)"
            )
        return states, None

    @property
    def _body(self) -> nn.Module:
        return getattr(self.model, "vision_model", self.model)  # older transformers wrap CLIP/SigLIP

    def final_norm(self, hidden: Tensor) -> Tensor:
        """The model's last LayerNorm (``layernorm`` / ``post_layernorm``)."""
        return getattr(self._body, self.norm_attr)(hidden)

    def preprocess(self, item: Any) -> Tensor:
        """PIL image (any mode) -> ``[3, S, S]``: plain resize to ``image_size`` (no crop), scale to
        [0, 1], normalise with the processor's mean/std."""
        size = (self.image_size, self.image_size)
        return image_to_tensor(item, size, self.image_mean, self.image_std, self.resample)


def from_pretrained(name_or_dir: str | os.PathLike, **kwargs: Any) -> HFVisionEncoder:
    """Alias of :meth:`HFVisionEncoder.from_pretrained`."""
    return HFVisionEncoder.from_pretrained(name_or_dir, **kwargs)
