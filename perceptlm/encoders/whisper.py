"""Whisper's audio encoder (Radford et al. 2022, Whisper) as a frozen perceptual encoder.

Audio is resampled to 16 kHz mono and padded or cropped to Whisper's 30 s window, giving an 80 x 3000
log-mel spectrogram (hop 160 samples); the encoder's stride-2 convolution turns that into 1500 frames
of 20 ms. Frames past the end of the real audio are masked out. ``seconds`` keeps only the frames of
the first ``seconds`` (the encoder still reads the full window, as Whisper was trained): for clips no
longer than that, the rest is the padding's encoding, and a shorter output keeps the LLM's input short.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from perceptlm.encoders.base import PerceptualEncoder, TokenSelection

SAMPLE_RATE = 16_000
HOP_LENGTH = 160  # samples per mel frame (10 ms)
CHUNK_SECONDS = 30


def load_waveform(item: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A path, a 1-D waveform at 16 kHz, or ``(waveform, sample_rate)`` -> mono float32 at ``sample_rate``."""
    import librosa

    if isinstance(item, (str, Path)):
        if not Path(item).is_file():
            raise FileNotFoundError(f"{item}: no such audio file")
        wave, _ = librosa.load(str(item), sr=sample_rate, mono=True)
        return wave.astype(np.float32)
    source_rate = sample_rate
    if isinstance(item, tuple):
        if len(item) != 2:
            raise ValueError("audio tuples must be (waveform, sample_rate)")
        item, source_rate = item
    if isinstance(item, Tensor):
        item = item.detach().cpu().numpy()
    wave = np.asarray(item, dtype=np.float32)
    if wave.ndim == 2:  # channels first, as librosa stores them
        wave = librosa.to_mono(wave)
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D waveform (or [channels, samples]); got shape {wave.shape}")
    if int(source_rate) != sample_rate:
        wave = librosa.resample(wave, orig_sr=int(source_rate), target_sr=sample_rate)
    return wave.astype(np.float32)


def encoder_frames(num_samples: int, hop_length: int = HOP_LENGTH, conv_stride: int = 2,
                   max_frames: int = 1500) -> int:
    """Encoder frames that carry real audio: ``ceil(samples / hop)`` mel frames, then ``ceil(/ stride)``
    after the stride-2 convolution (kernel 3, padding 1), capped at the 30 s window."""
    mel_frames = math.ceil(num_samples / hop_length)
    return min(math.ceil(mel_frames / conv_stride), max_frames)


def default_feature_extractor(num_mel_bins: int = 80):
    """Whisper's log-mel front end built from arguments (nothing downloaded)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=SAMPLE_RATE,
                                   hop_length=HOP_LENGTH, chunk_length=CHUNK_SECONDS, n_fft=400)


class WhisperAudioEncoder(PerceptualEncoder):
    """A transformers ``WhisperEncoder`` with DePALM layer/token selection.

    Readable layers are the outputs of the encoder blocks (``num_layers = encoder_layers``); the final
    norm is the encoder's ``layer_norm``. There is no CLS token. :meth:`preprocess` returns
    ``{"input_features": [n_mels, 3000], "num_frames": int}``; :meth:`stack_media` batches those dicts.
    """

    modality = "audio"
    has_cls = False
    grid = None

    def __init__(
        self,
        encoder: Any,
        feature_extractor: Any = None,
        name: str = "whisper",
        layers: int | Sequence[int] = 1,
        tokens: TokenSelection = "all",
        final_norm: bool = True,
        trainable: bool = False,
        seconds: float | None = None,
    ) -> None:
        super().__init__(layers=layers, tokens=tokens, final_norm=final_norm, trainable=trainable)
        config = encoder.config
        self.name = name
        self.encoder = encoder
        self.feature_extractor = feature_extractor or default_feature_extractor(config.num_mel_bins)
        self.embed_dim = config.d_model
        self.num_layers = config.encoder_layers
        self.num_mel_frames = config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
        self.conv_stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        window = self.num_mel_frames * HOP_LENGTH / SAMPLE_RATE
        if seconds is not None and not 0 < seconds <= window:
            raise ValueError(f"{name}: seconds={seconds} is outside Whisper's window; valid: 0 < seconds <= {window:g}")
        self.seconds = seconds
        self.num_raw_tokens = config.max_source_positions if seconds is None else \
            encoder_frames(round(seconds * SAMPLE_RATE), HOP_LENGTH, self.conv_stride, config.max_source_positions)
        self.setup_selection()

    # -- media ---------------------------------------------------------------------------------
    def preprocess(self, item: Any) -> dict[str, Any]:
        """Path, waveform or ``(waveform, sr)`` -> ``{"input_features": [n_mels, 3000], "num_frames": int}``."""
        wave = load_waveform(item)
        if wave.size == 0:
            raise ValueError(f"{self.name}: empty waveform; audio needs at least one sample")
        window = self.num_mel_frames * HOP_LENGTH
        wave = wave[:window]
        features = self.feature_extractor(
            wave, sampling_rate=SAMPLE_RATE, return_tensors="np", padding="max_length", max_length=window
        ).input_features[0]
        num_frames = encoder_frames(wave.size, HOP_LENGTH, self.conv_stride, self.num_raw_tokens)
        return {"input_features": torch.from_numpy(np.ascontiguousarray(features)).float(), "num_frames": num_frames}

    @staticmethod
    def stack_media(items: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Batch :meth:`preprocess` outputs into ``{"input_features": [B, n_mels, T], "num_frames": [B]}``."""
        return {
            "input_features": torch.stack([item["input_features"] for item in items]),
            "num_frames": torch.tensor([int(item["num_frames"]) for item in items], dtype=torch.long),
        }

    def _unpack(self, media: Any) -> tuple[Tensor, Tensor | None]:
        if isinstance(media, (list, tuple)):
            media = self.stack_media(list(media))
        if isinstance(media, dict):
            if "input_features" not in media:
                raise ValueError(f"{self.name}: audio batch dicts need 'input_features' (and optionally 'num_frames')")
            features, frames = media["input_features"], media.get("num_frames")
        elif isinstance(media, Tensor):
            features, frames = media, None
        else:
            raise TypeError(f"{self.name}: expected a [B, n_mels, T] tensor or a dict batch, got {type(media)}")
        if features.dim() == 2:
            features = features.unsqueeze(0)
        expected = (self.encoder.config.num_mel_bins, self.num_mel_frames)
        if tuple(features.shape[1:]) != expected:
            raise ValueError(f"{self.name}: input features must be [B, {expected[0]}, {expected[1]}] "
                             f"(30 s of log-mel); got {list(features.shape)}")
        if frames is not None:
            frames = torch.as_tensor(frames, device=features.device).reshape(-1)
        return features, frames

    # -- encoder -------------------------------------------------------------------------------
    def hidden_states(self, media: Any, layers: list[int]) -> tuple[list[Tensor], Tensor | None]:
        """Raw outputs of the given encoder blocks (no final norm) and the valid-frame mask.

        Forward hooks read the blocks directly: transformers' ``hidden_states`` output replaces the
        last block's output by its layer-normed version, which would apply the norm twice."""
        features, frames = self._unpack(media)
        parameter = next(self.encoder.parameters())
        features = features.to(device=parameter.device, dtype=parameter.dtype)
        captured: dict[int, Tensor] = {}

        def hook(index: int):
            def record(module, inputs, output):
                captured[index] = output[0] if isinstance(output, tuple) else output
            return record

        handles = [self.encoder.layers[i].register_forward_hook(hook(i)) for i in layers]
        try:
            self.encoder(input_features=features)
        finally:
            for handle in handles:
                handle.remove()
        states = [captured[i][:, :self.num_raw_tokens] for i in layers]
        mask = None
        if frames is not None:
            positions = torch.arange(states[0].shape[1], device=states[0].device)
            mask = positions[None, :] < frames.to(states[0].device)[:, None]
        return states, mask

    def final_norm(self, hidden: Tensor) -> Tensor:
        return self.encoder.layer_norm(hidden)
