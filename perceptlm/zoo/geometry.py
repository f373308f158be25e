"""The ``geometry:<real name>`` zoo names: the paper's backbones at their real architecture and size,
built from configs on the meta device (shapes and dtypes, no storage, no weights, nothing
downloaded) in the same perceptlm wrapper classes as the real names.

What they are for: building a mechanism at the paper's geometry (LLaMA-7B or OPT-6.7B with CLIP
ViT-L/14, TimeSformer, CLAP, ...) on a CPU machine in seconds, to read its structure, its token
counts and its parameter counts (``PerceptualLM.build(preset, encoder="geometry:...",
llm="geometry:...")``: the connector and the other trainable parts are ordinary CPU modules, only the
frozen backbones are on meta). Each encoder reports ``embed_dim``, ``num_layers``, ``grid`` and
``num_tokens`` for every feature selection (layers, CLS / patches / all, temporal aggregation),
all read from the config, not from a forward.

What they are not: runnable models. Meta parameters hold no values, so the backbones cannot encode
media or produce logits (``nn.Module.to_empty`` gives real but uninitialised storage).
A geometry LLM's tokenizer is a stand-in: the real tokenizers are not available offline, so it
carries the byte-level tokenizer of the tiny test LLMs (:func:`~perceptlm.zoo.tiny.tiny_tokenizer`,
258 ids, all inside the real vocabulary). It cannot tokenise real text meaningfully; its ids only keep
code that asks for EOS or padding working. The model config keeps the real checkpoint's values
(vocabulary size and special token ids included).

Names (:data:`GEOMETRY_LLMS`, :data:`GEOMETRY_ENCODERS`):

- ``geometry:huggyllama/llama-7b``: LLaMA-7B (32 layers, width 4096, MLP 11008, 32 heads, vocab
  32000, 2048 positions, RMSNorm eps 1e-6; 6.74B parameters).
- ``geometry:facebook/opt-6.7b``: OPT-6.7B (32 layers, width 4096, FFN 16384, 32 heads, vocab
  50272, 2048 positions, pre-norm, tied embeddings; 6.66B parameters).
- ``geometry:open_clip:ViT-L-14:openai``: OpenAI CLIP ViT-L/14 image tower at 224 px (QuickGELU, the
  tag's preprocessing), 24 blocks of width 1024, CLS + 16 x 16 patches = 257 tokens.
- ``geometry:open_clip:EVA02-L-14:merged2b_s4b_b131k``: EVA02-CLIP-L/14 image tower (a timm trunk),
  24 blocks of width 1024, 257 tokens.
- ``geometry:timesformer:facebook/timesformer-base-finetuned-k400``: TimeSformer-base backbone
  (transformers' ``TimesformerConfig`` defaults are this checkpoint's), 12 blocks of width 768,
  8 frames of 224 px, 16 px patches: 1 + 8 x 196 tokens (1 + 196 averaged over time).
- ``geometry:clap:laion/clap-htsat-unfused``: CLAP's HTS-AT-tiny audio tower (``ClapAudioConfig``
  defaults with ``enable_fusion=False``), last stage 2 blocks of 8 x 8 tokens of width 768.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from perceptlm.encoders.base import PerceptualEncoder
from perceptlm.encoders.clap_audio import ClapAudioEncoder
from perceptlm.encoders.video import TimeSformerEncoder
from perceptlm.llm.language_model import LanguageModel
from perceptlm.zoo.tiny import tiny_tokenizer

PREFIX = "geometry"
META = torch.device("meta")


# -- LLMs -----------------------------------------------------------------------------------------
def llama_7b_config() -> Any:
    """LLaMA-7B (Touvron et al., 2023) as the ``huggyllama/llama-7b`` checkpoint's config."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, rms_norm_eps=1e-6, max_position_embeddings=2048,
                       hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                       pad_token_id=0)


def opt_6_7b_config() -> Any:
    """OPT-6.7B (Zhang et al., 2022) as the ``facebook/opt-6.7b`` checkpoint's config."""
    from transformers import OPTConfig

    return OPTConfig(hidden_size=4096, ffn_dim=16384, num_hidden_layers=32, num_attention_heads=32,
                     vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=4096,
                     do_layer_norm_before=True, dropout=0.1, attention_dropout=0.0, activation_function="relu",
                     enable_bias=True, layer_norm_elementwise_affine=True, tie_word_embeddings=True,
                     bos_token_id=2, eos_token_id=2, pad_token_id=1)


LLM_CONFIGS: dict[str, Callable[[], Any]] = {
    "huggyllama/llama-7b": llama_7b_config,
    "facebook/opt-6.7b": opt_6_7b_config,
}


def geometry_llm(name: str, trainable: bool = False, dtype: torch.dtype = torch.float32) -> LanguageModel:
    """``geometry:<hub id>`` -> a :class:`LanguageModel` whose decoder is on the meta device, with the
    stand-in tokenizer (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    real = _strip(name)
    if real not in LLM_CONFIGS:
        raise ValueError(f"unknown geometry LLM {name!r}; valid: {', '.join(GEOMETRY_LLMS)}")
    config = LLM_CONFIGS[real]()
    config.name_or_path = real
    with torch.device(META):
        model = AutoModelForCausalLM.from_config(config)
    model = model.to(dtype=dtype).eval()
    return LanguageModel(model, tiny_tokenizer(), name=name, trainable=trainable)


# -- encoders -------------------------------------------------------------------------------------
def open_clip_geometry(model_name: str, tag: str) -> Callable[..., PerceptualEncoder]:
    """The builder of the ``open_clip:<model_name>:<tag>`` image tower on meta: the tag's QuickGELU
    and preprocessing, the wrapper the real name gets (:func:`open_clip_tower`)."""

    def build(image_size: int | None = None, dtype: torch.dtype | None = None, **selection: Any) -> PerceptualEncoder:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(model_name, tag)
        keys = ("mean", "std", "interpolation", "resize_mode", "fill_color")
        options: dict[str, Any] = {"force_image_size": image_size} if image_size else {}
        # open_clip moves the model to ``device`` after building it: meta there too, or it copies out of meta
        with torch.device(META), _quiet_random_init_notice():
            model = open_clip.create_model(
                model_name, pretrained=None, device=META, pretrained_text=False,
                force_quick_gelu=bool(cfg.get("quick_gelu", False)),
                force_preprocess_cfg={k: cfg[k] for k in keys if k in cfg}, **options,
            )
        if dtype is not None:
            model = model.to(dtype=dtype)
        return open_clip_tower(model, f"open_clip:{model_name}:{tag}", **selection)

    return build


class _quiet_random_init_notice(logging.Filter):
    """Drops open_clip's "initialized randomly" warning (root logger) while a meta tower is built:
    nothing is initialised there."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    def __enter__(self) -> None:
        logging.getLogger().addFilter(self)

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger().removeFilter(self)


def open_clip_tower(model: nn.Module, name: str, **selection: Any) -> PerceptualEncoder:
    """An open_clip model's image tower in the wrapper :func:`~perceptlm.encoders.open_clip_encoder.open_clip_encoder`
    gives it (the same dispatch on the tower's class)."""
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    from perceptlm.encoders.open_clip_encoder import OpenCLIPEncoder, open_clip_transform
    from perceptlm.encoders.timm_encoder import TimmEncoder

    transform, size = open_clip_transform(model)
    visual = model.visual
    if isinstance(visual, VisionTransformer):
        return OpenCLIPEncoder(visual, transform, name=name, **selection)
    if isinstance(visual, TimmModel):
        return TimmEncoder(visual.trunk, name=name, transform=transform, image_size=size, **selection)
    raise ValueError(f"{name}: unsupported image tower {type(visual).__name__}")


def timesformer_base_k400(temporal: str = "concat", num_frames: int | None = None,
                          torch_dtype: torch.dtype | None = None, **selection: Any) -> TimeSformerEncoder:
    """TimeSformer-base, divided space-time attention, 8 x 224 px frames (Bertasius et al., 2021), as
    the ``facebook/timesformer-base-finetuned-k400`` backbone (the classifier head is not part of the
    encoder, as for the real name). Mean/std: the checkpoint's 0.45 / 0.225."""
    from transformers import TimesformerConfig, TimesformerModel

    config = TimesformerConfig(image_size=224, patch_size=16, num_frames=8, hidden_size=768, num_hidden_layers=12,
                               num_attention_heads=12, intermediate_size=3072, attention_type="divided_space_time",
                               layer_norm_eps=1e-6, qkv_bias=True)
    config.name_or_path = "facebook/timesformer-base-finetuned-k400"
    model = _on_meta(lambda: TimesformerModel(config), torch_dtype)
    return TimeSformerEncoder(model, name="timesformer:facebook/timesformer-base-finetuned-k400", temporal=temporal,
                              num_frames=num_frames, **selection)


def clap_htsat_unfused(dtype: torch.dtype | None = None, stage: int = -1, padding: str = "pad",
                       output: str = "blocks", **selection: Any) -> ClapAudioEncoder:
    """CLAP's HTS-AT-tiny audio tower (Wu et al., 2023; 4 Swin stages of 2/2/6/2 blocks, widths
    96..768, 64 mels, 256 x 256 folded spectrogram, 4 px patches) as in ``laion/clap-htsat-unfused``
    (no fusion), with its audio projection (768 -> 512, Linear-ReLU-Linear) as the real name's
    ``ClapModel`` checkpoint has it, for ``output="projected"``. The feature extractor is built from
    arguments (:func:`~perceptlm.encoders.clap_audio.clap_feature_extractor`)."""
    from transformers import ClapAudioConfig, ClapAudioModel
    from transformers.models.clap.modeling_clap import ClapProjectionLayer

    config = ClapAudioConfig(enable_fusion=False)
    model = _on_meta(lambda: ClapAudioModel(config), dtype)
    projection = _on_meta(lambda: ClapProjectionLayer(config), dtype)
    return ClapAudioEncoder(model, name="clap:laion/clap-htsat-unfused", stage=stage, padding=padding, output=output,
                            projection=projection, **selection)


def _on_meta(build: Callable[[], nn.Module], dtype: torch.dtype | None) -> nn.Module:
    with torch.device(META):
        model = build()
    return (model if dtype is None else model.to(dtype=dtype)).eval()


ENCODER_BUILDERS: dict[str, Callable[..., PerceptualEncoder]] = {
    "open_clip:ViT-L-14:openai": open_clip_geometry("ViT-L-14", "openai"),
    "open_clip:EVA02-L-14:merged2b_s4b_b131k": open_clip_geometry("EVA02-L-14", "merged2b_s4b_b131k"),
    "timesformer:facebook/timesformer-base-finetuned-k400": timesformer_base_k400,
    "clap:laion/clap-htsat-unfused": clap_htsat_unfused,
}

GEOMETRY_LLMS: tuple[str, ...] = tuple(f"{PREFIX}:{name}" for name in LLM_CONFIGS)
GEOMETRY_ENCODERS: tuple[str, ...] = tuple(f"{PREFIX}:{name}" for name in ENCODER_BUILDERS)


def geometry_encoder(spec: str, **selection: Any) -> PerceptualEncoder:
    """Zoo prefix ``geometry:`` for encoders (``spec``: the real name after ``geometry:``); options as
    the real name's (``layers``, ``tokens``, ``final_norm``, ``trainable``, and the family's own:
    ``image_size``; ``temporal``, ``num_frames``; ``stage``, ``padding``)."""
    if spec not in ENCODER_BUILDERS:
        raise ValueError(f"unknown geometry encoder {PREFIX}:{spec!r}; valid: {', '.join(GEOMETRY_ENCODERS)}")
    encoder = ENCODER_BUILDERS[spec](**selection)
    encoder.name = f"{PREFIX}:{spec}"
    return encoder


def is_geometry(name: str) -> bool:
    return name.startswith(f"{PREFIX}:")


def on_meta(module: nn.Module) -> bool:
    """Every parameter and buffer of ``module`` is on the meta device."""
    tensors = [*module.parameters(), *module.buffers()]
    return bool(tensors) and all(t.is_meta for t in tensors)


def _strip(name: str) -> str:
    return name.removeprefix(f"{PREFIX}:")
