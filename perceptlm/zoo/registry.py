"""Names -> backbones: :func:`load_llm` and :func:`load_encoder`.

A name is one of the offline names below, or a Hugging Face hub id / local folder (the normal
``from_pretrained`` path; offline runs need it in the local cache).

Offline names:
- ``smollm2-135m-instruct``, ``efficientnet-lite0``, ``whisper-tiny.en``: pretrained weights shipped
  as packages (:mod:`perceptlm.zoo.packaged`).
- ``test-tiny-llama`` (``-qwen2``, ``-mistral``, ``-opt``, ``-gpt2``, or any transformers decoder
  model type: ``test-tiny-gemma3_text``, ``test-tiny-granite``, ...), ``test-tiny-vit``,
  ``test-tiny-audio``, ``test-tiny-ast``, ``test-tiny-clap``: tiny random-init backbones;
  ``test-tiny-timesformer``, ``test-tiny-video`` (``video:test-tiny-vit``, 4 frames): tiny video
  encoders (:mod:`perceptlm.zoo.tiny`).

Prefixed names (``PREFIX:rest``, :data:`ENCODER_PREFIXES`):
- ``open_clip:MODEL[:TAG]``, ``timm:NAME[:pretrained]``: open_clip image towers and timm models.
- ``video:NAME``: the image encoder NAME (any name :func:`load_encoder` takes) run on every frame
  (``num_frames``, ``temporal``); ``timesformer:ID``: a locally cached TimeSformer checkpoint.
- ``ast:ID`` / ``clap:ID``: a locally cached AST checkpoint / CLAP audio tower.

``geometry:<real name>`` (LLMs and encoders, :mod:`perceptlm.zoo.geometry`): the paper's backbones
at their real architecture and size on the meta device, no weights: for structure and parameter
counts, not for running.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import torch

from perceptlm.encoders.ast_audio import ast_from_pretrained
from perceptlm.encoders.base import PerceptualEncoder
from perceptlm.encoders.clap_audio import clap_from_pretrained
from perceptlm.encoders.hf_vision import HFVisionEncoder
from perceptlm.encoders.open_clip_encoder import open_clip_encoder
from perceptlm.encoders.timm_encoder import timm_encoder
from perceptlm.encoders.video import VideoFrameEncoder, timesformer_encoder, video_encoder
from perceptlm.llm.language_model import LanguageModel
from perceptlm.zoo.geometry import GEOMETRY_LLMS, geometry_encoder, geometry_llm, is_geometry
from perceptlm.zoo.packaged import efficientnet_lite0_encoder, smollm2_folder, whisper_tiny_en_encoder
from perceptlm.zoo.tiny import (
    tiny_ast_encoder,
    tiny_audio_encoder,
    tiny_clap_encoder,
    tiny_llm_model,
    tiny_timesformer_encoder,
    tiny_video_encoder,
    tiny_vit_encoder,
)


# -- LLMs -----------------------------------------------------------------------------------------
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def llm_dtype(name: str | torch.dtype = "auto", tuning: str = "frozen", llm: str = "the LLM") -> torch.dtype:
    """The dtype a frozen LLM loads in: ``float32``, ``bfloat16``, ``float16``, or ``auto``: bfloat16
    where a GPU runs it natively (CUDA, compute capability >= 8.0), float32 otherwise. A dtype this
    machine cannot run is an error naming it. An LLM ``tuning`` that trains the LLM's own weights
    (``norms``, ``full``) keeps them float32 (``auto``); another dtype for them is an error."""
    if isinstance(name, torch.dtype):
        name = str(name).removeprefix("torch.")
    if tuning in ("norms", "full"):
        if name not in ("auto", "float32"):
            raise ValueError(f"llm_tuning={tuning!r} trains {llm}'s own weights, which stay float32 (llm_dtype "
                             f"'auto' or 'float32', with bf16-mixed precision for speed); got llm_dtype={name!r}")
        return torch.float32
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if name == "auto":
        return torch.bfloat16 if gpu_bf16 else torch.float32
    if name not in DTYPES:
        raise ValueError(f"llm_dtype={name!r} is unknown; valid: auto, {', '.join(DTYPES)}")
    if name == "bfloat16" and torch.cuda.is_available() and not gpu_bf16:
        raise ValueError(f"llm_dtype='bfloat16' on {torch.cuda.get_device_name()}, which has no native bfloat16 "
                         "(compute capability < 8.0); use float16 or float32")
    return DTYPES[name]


def load_llm(name: str, trainable: bool = False, dtype: torch.dtype = torch.float32, **kwargs: Any) -> LanguageModel:
    """Load a decoder-only LLM by zoo name, hub id or local folder, its weights in ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if is_geometry(name):
        return geometry_llm(name, trainable=trainable, dtype=dtype, **kwargs)
    if name.startswith("test-tiny-"):
        family = name.removeprefix("test-tiny-")
        model, tokenizer = tiny_llm_model(family, **kwargs)
        return LanguageModel(model.to(dtype), tokenizer, name=name, trainable=trainable)
    if name == "smollm2-135m-instruct":
        folder: str | Path = smollm2_folder()
    else:
        folder = name
    trust = bool(kwargs.pop("trust_remote_code", False))
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
    except OSError as error:
        raise ValueError(
            f"cannot load LLM {name!r}: not an offline zoo name ({', '.join(LLM_NAMES)}) and not a "
            f"loadable hub id or folder ({error})"
        ) from None
    return LanguageModel(model, tokenizer, name=name, trainable=trainable)


LLM_NAMES = ("smollm2-135m-instruct", "test-tiny-llama", "test-tiny-qwen2", "test-tiny-mistral",
             "test-tiny-opt", "test-tiny-gpt2", *GEOMETRY_LLMS)


# -- encoders -------------------------------------------------------------------------------------
ENCODERS: dict[str, Callable[..., PerceptualEncoder]] = {
    "efficientnet-lite0": efficientnet_lite0_encoder,
    "whisper-tiny.en": whisper_tiny_en_encoder,
    "test-tiny-vit": tiny_vit_encoder,
    "test-tiny-audio": tiny_audio_encoder,
    "test-tiny-timesformer": tiny_timesformer_encoder,
    "test-tiny-video": tiny_video_encoder,  # video:test-tiny-vit, 4 frames
    "test-tiny-ast": tiny_ast_encoder,
    "test-tiny-clap": tiny_clap_encoder,
}


def per_frame_encoder(image: str, **options: Any) -> VideoFrameEncoder:
    """Zoo prefix ``video:NAME``: the image encoder ``NAME`` (any zoo name, hub id or folder; its own
    options among ``options``) on every frame (:func:`~perceptlm.encoders.video.video_encoder`)."""
    return video_encoder(functools.partial(load_encoder, image), **options)


# Prefixed names: ``PREFIX:rest`` -> ``loader(rest, **selection)``.
ENCODER_PREFIXES: dict[str, Callable[..., PerceptualEncoder]] = {
    "open_clip": open_clip_encoder,
    "timm": timm_encoder,
    "video": per_frame_encoder,  # video:IMAGE_ENCODER, per frame
    "timesformer": timesformer_encoder,  # timesformer:HUB_ID_OR_DIR
    "ast": ast_from_pretrained,  # ast:HUB_ID_OR_DIR
    "clap": clap_from_pretrained,  # clap:HUB_ID_OR_DIR (audio tower)
    "geometry": geometry_encoder,  # geometry:REAL_NAME, meta device (perceptlm.zoo.geometry)
}


def load_encoder(name: str, **selection: Any) -> PerceptualEncoder:
    """Load a frozen perceptual encoder by zoo name, prefixed name (``ENCODER_PREFIXES``), hub id or
    local folder. ``selection``: ``layers``, ``tokens``, ``final_norm``, ``trainable`` (and the
    family's own options, e.g. a video encoder's frame count)."""
    prefix, _, rest = name.partition(":")
    if name in ENCODERS:
        encoder = ENCODERS[name](**selection)
    elif rest and prefix in ENCODER_PREFIXES:
        encoder = ENCODER_PREFIXES[prefix](rest, **selection)
    else:
        try:
            encoder = HFVisionEncoder.from_pretrained(name, **selection)
        except OSError as error:
            raise ValueError(
                f"cannot load encoder {name!r}: not an offline zoo name ({', '.join(ENCODERS)}) and "
                f"not a loadable hub id or folder ({error})"
            ) from None
    encoder.name = name
    return encoder
