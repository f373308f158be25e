"""Shared parts of the Hugging Face spectrogram transformers (AST: :mod:`perceptlm.encoders.ast_audio`,
CLAP's HTS-AT audio tower: :mod:`perceptlm.encoders.clap_audio`): media handling, block readout and
offline checkpoint loading.

Audio goes through :func:`~perceptlm.encoders.whisper.load_waveform` (mono, resampled to the
encoder's rate: AST 16 kHz, CLAP 48 kHz), is cropped to the encoder's window (the first 10.26 s =
1024 frames / 10 s; no random crop, so one file has one encoding) and padded with zeros; the
model's own ``FeatureExtractor`` makes the spectrogram. A token is *valid* (mask True) when its
footprint in the waveform (STFT window -> spectrogram frames -> patch -> patch merging) contains at
least one real sample; attention mixes everything later, as in Whisper's mask.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from perceptlm.encoders.base import PerceptualEncoder
from perceptlm.encoders.whisper import WhisperAudioEncoder, load_waveform


class SpectrogramEncoder(PerceptualEncoder):
    """Shared media handling: waveform -> ``{"input_features", "num_frames"}`` (valid spectrogram
    frames), batching, and block outputs read with forward hooks."""

    modality = "audio"
    sample_rate: int
    stack_media = staticmethod(WhisperAudioEncoder.stack_media)

    def _wave(self, item: Any) -> np.ndarray:
        wave = load_waveform(item, self.sample_rate)
        if wave.size == 0:
            raise ValueError(f"{self.name}: empty waveform; audio needs at least one sample")
        return wave

    def _unpack(self, media: Any, shape: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
        if isinstance(media, (list, tuple)):
            media = self.stack_media(list(media))
        frames = None
        if isinstance(media, dict):
            if "input_features" not in media:
                raise ValueError(f"{self.name}: audio batch dicts need 'input_features' (and optionally 'num_frames')")
            media, frames = media["input_features"], media.get("num_frames")
        if not isinstance(media, Tensor):
            raise TypeError(f"{self.name}: expected a feature tensor or a dict batch, got {type(media).__name__}")
        if media.dim() == len(shape):
            media = media.unsqueeze(0)
        if tuple(media.shape[1:]) != shape:
            raise ValueError(f"{self.name}: input features must be [B, {', '.join(map(str, shape))}] "
                             f"(see preprocess); got {list(media.shape)}")
        parameter = next(self.parameters())
        media = media.to(device=parameter.device, dtype=parameter.dtype)
        if frames is not None:
            frames = torch.as_tensor(frames, device=media.device).reshape(-1)
        return media, frames

    @staticmethod
    def _capture(blocks: dict[int, nn.Module], run: Callable[[], Any]) -> dict[int, Tensor]:
        captured: dict[int, Tensor] = {}

        def hook(index: int):
            def record(module, inputs, output):
                captured[index] = output[0] if isinstance(output, tuple) else output
            return record

        handles = [block.register_forward_hook(hook(i)) for i, block in blocks.items()]
        try:
            run()
        finally:
            for handle in handles:
                handle.remove()
        return captured


# -- checkpoints ----------------------------------------------------------------------------------
def local_extractor(cls: Any, name: str) -> Any:
    """The checkpoint's own feature extractor when it is on disk (folder or HF cache), else None."""
    try:
        return cls.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return None


def load_checkpoint(model_class: Any, name: str, dtype: torch.dtype | None,
                    prefix: str | tuple[str, ...] = "") -> nn.Module:
    """``model_class.from_pretrained`` from a folder or the local HF cache (never downloads), refusing
    to leave the weights under ``prefix`` (one or several) at random."""
    try:
        model, info = model_class.from_pretrained(name, output_loading_info=True, local_files_only=True,
                                                  **({"dtype": dtype} if dtype else {}))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load {model_class.__name__} {name!r}: not a checkpoint folder and not in "
                         f"the offline Hugging Face cache ({error})") from None
    missing = [key for key in info.get("missing_keys", []) if key.startswith(prefix)]
    if missing:
        raise ValueError(f"{name}: the checkpoint lacks {len(missing)} {model_class.__name__} weights "
                         f"(e.g. {sorted(missing)[:3]}); is it the right model family?")
    return model.eval()


def checkpoint_model_type(name: str, valid: tuple[str, ...]) -> str:
    """The checkpoint's ``model_type`` (offline cache or folder), checked against ``valid``."""
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(name, local_files_only=True).model_type
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load {name!r}: not a checkpoint folder and not in the offline Hugging Face "
                         f"cache ({error})") from None
    if model_type not in valid:
        raise ValueError(f"{name}: model_type {model_type!r} is not one of {list(valid)}")
    return model_type
