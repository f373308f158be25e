"""timm image models (Wightman, "PyTorch Image Models", 2019-) as frozen image encoders.

Zoo names: ``timm:<model_name>`` (random init: tests, shapes, timing) and
``timm:<model_name>:pretrained`` (the model's default weights, e.g. ``timm:vit_base_patch16_224``;
a ``name.tag`` picks other weights, e.g. ``timm:vit_base_patch16_224.augreg_in21k:pretrained``).
Weights are read from the local Hugging Face cache (or the torch-hub cache for URL-only weights) and
never downloaded at run time; a missing file raises an error that names what to download.

Two families:

- **ViT-like** (``blocks`` + ``patch_embed`` + ``num_prefix_tokens``: ViT, DeiT, DINOv2, EVA, ...):
  every transformer block is readable (read with timm's public ``forward_intermediates``); the final
  norm is ``model.norm`` (for models that pool first and normalise after, ``model.norm`` is the
  identity and their ``fc_norm`` is applied to each token instead). Tokens are CLS (when the model
  has one) + the patch grid (``patch_embed.grid_size``, row-major). Other prefix tokens (register
  tokens of ``*_reg*`` models, DeiT's distillation token) are dropped: they are scratch space without
  a place in the image, and keeping the grid after the CLS token is the features contract.
- **CNNs** (anything whose ``forward_features`` gives a 4-D map: ResNet, EfficientNet, ConvNeXt,
  Swin's NHWC map...): one readable layer, the final feature map, consistent with
  :class:`~perceptlm.encoders.efficientnet.EfficientNetEncoder`: tokens are its spatial mean (a global
  token at index 0, ``has_cls``) followed by the flattened map (row-major); no final norm.

Preprocessing is the model's own evaluation transform: ``timm.data.resolve_data_config`` +
``timm.data.create_transform(is_training=False)`` (resize by ``crop_pct``, centre crop, mean/std).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from perceptlm.encoders.base import PerceptualEncoder
from perceptlm.encoders.efficientnet import to_rgb

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def cached_hub_file(repo_id: str, filenames: Sequence[str], cache_dir: str | None = None) -> str | None:
    """The first of ``filenames`` present in the local Hugging Face cache for ``repo_id`` (never
    downloads), or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def is_token_model(model: nn.Module) -> bool:
    """A ViT-like timm model: transformer blocks over patch tokens with a public forward_intermediates."""
    return all(hasattr(model, a) for a in ("blocks", "patch_embed", "num_prefix_tokens", "forward_intermediates"))


def _image_transform(model: nn.Module) -> tuple[Callable[[Any], Tensor], tuple[int, int]]:
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=model)
    transform = create_transform(**config, is_training=False)
    size = tuple(int(s) for s in config["input_size"][-2:])
    return transform, size  # type: ignore[return-value]


class TimmEncoder(PerceptualEncoder):
    """A timm model with per-block (ViT-like) or final-map (CNN) readout; see the module docstring.

    ``transform``/``image_size`` replace timm's evaluation transform (the open_clip towers built on
    timm trunks pass open_clip's own preprocessing)."""

    modality = "image"

    def __init__(self, model: nn.Module, name: str = "timm", transform: Callable[[Any], Tensor] | None = None,
                 image_size: tuple[int, int] | None = None, **selection: Any) -> None:
        super().__init__(**selection)
        self.model = model.eval()
        self.name = name
        if transform is None:
            transform, image_size = _image_transform(model)
        elif image_size is None:
            raise ValueError(f"{name}: pass image_size with a custom transform")
        self.transform, self.image_size = transform, tuple(image_size)
        self.kind = "vit" if is_token_model(model) else "cnn"
        if self.kind == "vit":
            self._init_vit()
        else:
            self._init_cnn()
        self.setup_selection()

    # -- ViT-like ------------------------------------------------------------------------------------
    def _init_vit(self) -> None:
        model = self.model
        self.num_layers = len(model.blocks)
        self.embed_dim = int(getattr(model, "embed_dim", 0) or model.num_features)
        self.has_cls = getattr(model, "cls_token", None) is not None
        self.num_prefix = int(model.num_prefix_tokens)
        grid = tuple(int(g) for g in model.patch_embed.grid_size)
        self.grid = grid  # type: ignore[assignment]
        self.num_raw_tokens = grid[0] * grid[1] + int(self.has_cls)
        # The name of the final norm inside ``model`` (a name, so the module is not registered twice).
        self.norm_name: str | None = None
        for name in ("norm", "fc_norm"):
            module = getattr(model, name, None)
            if isinstance(module, nn.Module) and not isinstance(module, nn.Identity):
                self.norm_name = name
                break

    def _vit_states(self, media: Tensor, layers: list[int]) -> list[Tensor]:
        kwargs: dict[str, Any] = {"return_prefix_tokens": True} if self.num_prefix else {}
        outputs = self.model.forward_intermediates(
            media, indices=list(layers), norm=False, stop_early=True, output_fmt="NLC",
            intermediates_only=True, **kwargs,
        )
        states = []
        for output in outputs:
            patches, prefix = output if self.num_prefix else (output, None)
            if patches.shape[1] != self.grid[0] * self.grid[1]:  # type: ignore[index]
                raise ValueError(
                    f"{self.name}: {patches.shape[1]} patch tokens, expected grid {self.grid}; feed "
                    f"{self.image_size[0]}x{self.image_size[1]} images (see preprocess)"
                )
            # timm orders prefix tokens [CLS, registers / distillation]; keep the CLS only.
            states.append(torch.cat([prefix[:, :1], patches], dim=1) if self.has_cls else patches)
        return states

    # -- CNN -----------------------------------------------------------------------------------------
    def _init_cnn(self) -> None:
        self.num_layers = 1
        self.has_cls = True
        self.norm_name = None
        self.channels_last_output = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
        with torch.no_grad():
            probe = self._feature_map(torch.zeros(1, 3, *self.image_size))
        self.embed_dim = int(probe.shape[1])
        self.grid = (int(probe.shape[2]), int(probe.shape[3]))
        self.num_raw_tokens = self.grid[0] * self.grid[1] + 1

    def _feature_map(self, media: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> the final map ``[B, C, h, w]``."""
        fmap = self.model.forward_features(media)
        if not isinstance(fmap, Tensor) or fmap.ndim != 4:
            shape = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
            raise ValueError(
                f"{self.name}: forward_features gave {shape}; supported timm models are ViT-like "
                "(blocks + patch_embed + num_prefix_tokens) or give a 4-D feature map"
            )
        return fmap.permute(0, 3, 1, 2) if self.channels_last_output else fmap

    def _cnn_states(self, media: Tensor) -> list[Tensor]:
        fmap = self._feature_map(media)
        if tuple(fmap.shape[-2:]) != self.grid:
            raise ValueError(
                f"{self.name}: feature map {tuple(fmap.shape[-2:])} != grid {self.grid}; feed "
                f"{self.image_size[0]}x{self.image_size[1]} images (see preprocess)"
            )
        patches = fmap.flatten(2).transpose(1, 2)  # [B, h*w, C], row-major
        return [torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)]

    # -- contract ------------------------------------------------------------------------------------
    def hidden_states(self, media: Tensor, layers: list[int]) -> tuple[list[Tensor], Tensor | None]:
        media = media.to(next(self.model.parameters()).dtype)
        if self.kind == "vit":
            return self._vit_states(media, layers), None
        if list(layers) != [0]:
            raise ValueError(f"{self.name}: only layer 0 (the final feature map) is readable, got {layers}")
        return self._cnn_states(media), None

    def final_norm(self, hidden: Tensor) -> Tensor:
        """``model.norm`` (or ``fc_norm`` when ``norm`` is the identity); identity for CNNs."""
        return hidden if self.norm_name is None else getattr(self.model, self.norm_name)(hidden)

    def preprocess(self, item: Any) -> Tensor:
        """PIL image (any mode, made RGB first) -> ``[3, H, W]`` through the evaluation transform."""
        return self.transform(to_rgb(item))


# -- weights and zoo entry -------------------------------------------------------------------------
def cached_timm_weights(model_name: str) -> dict[str, Any]:
    """``pretrained_cfg_overlay`` that points timm at cached weights; an error naming the download."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        raise ValueError(f"timm:{model_name}: timm has no pretrained weights under this name")
    tried = []
    if cfg.hf_hub_id:
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES
        found = cached_hub_file(cfg.hf_hub_id, files)
        if found:
            return {"file": found, "custom_load": False}  # hub files hold timm-format state dicts
        tried.append(f"the Hugging Face cache for {cfg.hf_hub_id} ({' or '.join(files)})")
    if cfg.url:
        local = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url.split("?")[0])
        if local.is_file():
            return {"file": str(local)}
        tried.append(str(local))
    hint = (f"`huggingface-cli download {cfg.hf_hub_id}`" if cfg.hf_hub_id else f"download {cfg.url} into "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}")
    raise FileNotFoundError(
        f"timm:{model_name}:pretrained: weights are read from the local cache only and are not there "
        f"(looked in {'; '.join(tried) or 'nothing: no source in its config'}). Fetch them once, "
        f"e.g. {hint}, or use timm:{model_name} for random init"
    )


def timm_encoder(spec: str, **selection: Any) -> TimmEncoder:
    """Zoo entry for ``timm:<model_name>[:pretrained]`` (``spec`` is the part after ``timm:``)."""
    import timm

    model_name, _, weights = spec.partition(":")
    if weights not in ("", "pretrained"):
        raise ValueError(f"timm:{spec}: the suffix must be ':pretrained' or nothing (random init), got {weights!r}")
    architecture = model_name.split(".")[0]
    if architecture not in timm.list_models():
        raise ValueError(f"timm:{spec}: unknown timm model {architecture!r}; see timm.list_models()")
    if weights:
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=cached_timm_weights(model_name))
    else:
        with torch.random.fork_rng(devices=[]):  # seeded, reproducible random init
            torch.manual_seed(0)
            model = timm.create_model(model_name, pretrained=False)
    return TimmEncoder(model, name=f"timm:{spec}", **selection)
