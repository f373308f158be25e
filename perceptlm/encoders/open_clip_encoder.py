"""open_clip image towers (Ilharco et al., OpenCLIP, 2021; Cherti et al., CVPR 2023) as frozen image
encoders: OpenAI CLIP (Radford et al., ICML 2021), LAION CLIP, EVA02-CLIP (Sun et al., 2023), ...

Zoo names: ``open_clip:<model>:<pretrained tag>``, e.g. ``open_clip:ViT-B-32:openai``,
``open_clip:ViT-L-14:laion2b_s32b_b82k`` (DePALM's default backbone family),
``open_clip:EVA02-L-14:merged2b_s4b_b131k``; ``open_clip:<model>`` alone is a random init (tests,
shapes, timing). Tagged weights are read from the local Hugging Face cache (or open_clip's URL cache
``~/.cache/clip``) only; a missing file raises an error naming the repository and file to download.
Tags trained with QuickGELU (e.g. ``openai``) get it, as the tag's config says.

Towers:

- ``VisionTransformer`` (open_clip's own ViT): forward hooks (``register_forward_hook``) on every
  ``transformer.resblocks[i]`` read any block. Block outputs are always [CLS, patches...] (the class
  embedding is prepended whatever ``pool_type``/``output_tokens`` say; those only shape the pooled
  output): tokens = CLS + the ``grid_size`` patch grid, row-major. ``tokens="cls"`` reads that class
  token, which ``pool_type="avg"`` towers do not use as their embedding. The final norm is
  ``ln_post``, except for towers with an attentional pooler whose ``ln_post`` normalises the
  pooler's output (CoCa): they have no final norm for block outputs, and asking for one is an error.
- timm-based towers (``TimmModel``: EVA02, SigLIP, ...): the timm trunk is read as in
  :mod:`perceptlm.encoders.timm_encoder` (blocks, ``norm``, CLS + grid, register tokens dropped),
  with open_clip's preprocessing. ``EVA02-L-14`` (EVA02-CLIP-L, tag ``merged2b_s4b_b131k``, the
  weights of timm's ``eva02_large_patch14_clip_224.merged2b``): 24 blocks of CLS + 16 x 16 tokens of
  width 1024 (257 x 1024), final norm the trunk's ``norm``; DePALM's ``eva-clip-L`` reads its raw
  block outputs, i.e. ``final_norm=False``.
- Other towers (ModifiedResNet ``RN50``..., Hugging Face towers) are not supported.

Preprocessing is open_clip's evaluation transform for the model and tag
(``open_clip.image_transform`` with the tag's mean/std/interpolation/resize mode and the tower's
image size).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from perceptlm.encoders.base import PerceptualEncoder
from perceptlm.encoders.efficientnet import to_rgb
from perceptlm.encoders.timm_encoder import TimmEncoder, cached_hub_file


RESIZE_MODES = ("shortest", "longest", "squash")


def open_clip_transform(model: nn.Module,
                        resize_mode: str | None = None) -> tuple[Callable[[Any], Tensor], tuple[int, int]]:
    """open_clip's evaluation transform from the model's preprocess config (``resize_mode`` replaces
    the config's), and its (h, w) size."""
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    if resize_mode is not None and resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode={resize_mode!r} is unknown; valid: {RESIZE_MODES}")
    size = cfg.get("size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    transform = open_clip.image_transform(
        size, is_train=False, mean=cfg.get("mean"), std=cfg.get("std"),
        resize_mode=resize_mode or cfg.get("resize_mode"), interpolation=cfg.get("interpolation"),
        fill_color=cfg.get("fill_color", 0),
    )
    return transform, (int(size[0]), int(size[1]))


class OpenCLIPEncoder(PerceptualEncoder):
    """An open_clip ``VisionTransformer`` tower read through per-block forward hooks."""

    modality = "image"

    def __init__(self, visual: nn.Module, transform: Callable[[Any], Tensor], name: str = "open_clip",
                 **selection: Any) -> None:
        super().__init__(**selection)
        from open_clip.transformer import VisionTransformer

        if not isinstance(visual, VisionTransformer):
            raise TypeError(f"{name}: expected an open_clip VisionTransformer, got {type(visual).__name__}")
        self.visual = visual.eval()
        self.name = name
        self.transform = transform
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.num_layers = len(visual.transformer.resblocks)
        self.embed_dim = int(visual.transformer.width)
        self.has_cls = True
        self.grid = tuple(int(g) for g in visual.grid_size)  # type: ignore[assignment]
        self.num_raw_tokens = self.grid[0] * self.grid[1] + 1  # type: ignore[index]
        self.image_size = tuple(int(s) for s in visual.image_size)
        # ln_post acts on block outputs unless an attentional pooler (CoCa) runs first.
        pooler_first = visual.attn_pool is not None and getattr(visual, "attn_pool_contrastive", None) is None
        self.has_final_norm = not pooler_first
        self.setup_selection()

    def setup_selection(self) -> None:
        if self.apply_final_norm and not self.has_final_norm:
            raise ValueError(
                f"{self.name}: this tower's ln_post normalises its attentional pooler's output, not the "
                "block outputs, so there is no final norm to apply; pass final_norm=False"
            )
        super().setup_selection()

    def hidden_states(self, media: Tensor, layers: list[int]) -> tuple[list[Tensor], Tensor | None]:
        captured: dict[int, Tensor] = {}

        def keep(index: int) -> Callable[..., None]:
            def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
                captured[index] = output if self.batch_first else output.transpose(0, 1)
            return hook

        blocks = self.visual.transformer.resblocks
        handles = [blocks[i].register_forward_hook(keep(i)) for i in layers]
        try:
            dtype = self.visual.conv1.weight.dtype
            self.visual(media.to(dtype))
        finally:
            for handle in handles:
                handle.remove()
        states = [captured[i] for i in layers]
        if states[0].shape[1] != self.num_raw_tokens:
            raise ValueError(
                f"{self.name}: {states[0].shape[1]} tokens, expected {self.num_raw_tokens} (grid {self.grid} "
                f"+ CLS); feed {self.image_size[0]}x{self.image_size[1]} images (see preprocess)"
            )
        return states, None

    def final_norm(self, hidden: Tensor) -> Tensor:
        """The tower's ``ln_post``."""
        return self.visual.ln_post(hidden) if self.has_final_norm else hidden

    def preprocess(self, item: Any) -> Tensor:
        """PIL image (any mode, made RGB first) -> ``[3, H, W]`` through open_clip's eval transform."""
        return self.transform(to_rgb(item))


# -- weights and zoo entry -------------------------------------------------------------------------
def cached_open_clip_weights(model_name: str, tag: str) -> tuple[str, dict[str, Any]]:
    """(local checkpoint path, the tag's config) for a pretrained tag; never downloads."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(f"open_clip:{model_name}:{tag}: unknown pretrained tag; valid tags: {tags}")
    tried, hints = [], []
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        files = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth")):
            files.insert(0, filename[:-4] + ".safetensors")
        found = cached_hub_file(repo, files)
        if found:
            return found, cfg
        tried.append(f"the Hugging Face cache for {repo} ({' or '.join(files)})")
        hints.append(f"`huggingface-cli download {repo} {files[0]}`")
    if cfg.get("url"):
        local = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if local.is_file():
            return str(local), cfg
        tried.append(str(local))
        hints.append(f"{cfg['url']} into {local.parent}")
    raise FileNotFoundError(
        f"open_clip:{model_name}:{tag}: weights are read from the local cache only and are not there "
        f"(looked in {'; '.join(tried)}). Fetch them once: {' or '.join(hints)}; "
        f"open_clip:{model_name} (no tag) gives a random init"
    )


def open_clip_encoder(spec: str, image_size: int | None = None, resize_mode: str | None = None,
                      **selection: Any) -> PerceptualEncoder:
    """Zoo entry for ``open_clip:<model>[:<tag>]`` (``spec`` is the part after ``open_clip:``).
    ``image_size`` overrides the tower's resolution (position embeddings are interpolated);
    ``resize_mode`` the preprocessing's resize: ``"shortest"`` (resize the short side, centre crop),
    ``"longest"`` (resize the long side, pad) or ``"squash"`` (resize to the square, ignoring the
    aspect ratio)."""
    import open_clip
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    model_name, _, tag = spec.partition(":")
    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"open_clip:{spec}: unknown model {model_name!r}; valid: open_clip.list_models()")
    kwargs: dict[str, Any] = {"force_image_size": image_size} if image_size else {}
    if tag:
        path, cfg = cached_open_clip_weights(model_name, tag)
        keys = ("mean", "std", "interpolation", "resize_mode", "fill_color")
        model = open_clip.create_model(
            model_name, pretrained=path, force_quick_gelu=bool(cfg.get("quick_gelu", False)),
            force_preprocess_cfg={k: cfg[k] for k in keys if k in cfg}, **kwargs,
        )
    else:
        with torch.random.fork_rng(devices=[]):  # seeded, reproducible random init
            torch.manual_seed(0)
            model = open_clip.create_model(model_name, pretrained=None, **kwargs)
    transform, size = open_clip_transform(model, resize_mode)
    visual = model.visual
    name = f"open_clip:{spec}"
    encoder: PerceptualEncoder
    if isinstance(visual, VisionTransformer):
        encoder = OpenCLIPEncoder(visual, transform, name=name, **selection)
    elif isinstance(visual, TimmModel):
        encoder = TimmEncoder(visual.trunk, name=name, transform=transform, image_size=size, **selection)
    else:
        raise ValueError(
            f"{name}: the {type(visual).__name__} image tower is not supported; supported: open_clip "
            "VisionTransformer towers (ViT-*) and timm-based towers (EVA02-*, *-SigLIP*)"
        )
    if resize_mode is not None:
        encoder.resize_mode = resize_mode  # part of the preprocessing (and so of the feature cache's key)
    return encoder
