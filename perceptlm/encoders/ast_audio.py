"""AST (Gong et al., "AST: Audio Spectrogram Transformer", Interspeech 2021) as a frozen audio encoder.

Audio handling and token validity are shared with CLAP (:mod:`perceptlm.encoders.spectrogram`).

**AST.** Readable layers: the transformer blocks. Final norm: ``layernorm``. Tokens: AST prepends a
CLS and a distillation token (DeiT initialisation); AST's own pooled output is their mean, so the two
are merged into ONE global token at index 0 (the mean of the two, after the final norm when it is
applied: exactly ``ASTModel``'s ``pooler_output``), followed by the ``F x T`` patch tokens in the
model's order (frequency-major, time fastest; ``grid = (F, T)``, e.g. 12 x 101 for 128 mel bins x
1024 frames). Frames: 25 ms windows every 10 ms without centring (400 / 160 samples); a clip of
``n >= 400`` samples has ``1 + (n - 400) // 160`` real frames (shorter clips are zero-padded to one
frame), the rest of the 1024 frames are padding. Patch column ``t`` covers frames
``[t * time_stride, t * time_stride + 16)``, so it is valid iff ``t * time_stride < frames``.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from perceptlm.encoders.spectrogram import SpectrogramEncoder, checkpoint_model_type, load_checkpoint, local_extractor

AST_FRAME, AST_HOP = 400, 160  # ASTFeatureExtractor's numpy path: 25 ms / 10 ms at 16 kHz


def ast_valid_frames(num_samples: int, max_frames: int) -> int:
    """Spectrogram frames made only of real audio (uncentred 400-sample windows, hop 160)."""
    return min(1 + (max(num_samples, AST_FRAME) - AST_FRAME) // AST_HOP, max_frames)


class ASTAudioEncoder(SpectrogramEncoder):
    """A transformers ``ASTModel`` with DePALM layer/token selection (see the module docstring)."""

    has_cls = True

    def __init__(self, model: nn.Module, feature_extractor: Any = None, name: str = "ast", **selection: Any) -> None:
        super().__init__(**selection)
        config = model.config
        self.model, self.name = model, name
        self.feature_extractor = feature_extractor or ast_feature_extractor(config)
        fe = self.feature_extractor
        if (fe.sampling_rate, fe.num_mel_bins, fe.max_length) != (16_000, config.num_mel_bins, config.max_length):
            raise ValueError(f"{name}: feature extractor ({fe.sampling_rate} Hz, {fe.num_mel_bins} mels, "
                             f"{fe.max_length} frames) does not match the model (16000 Hz, "
                             f"{config.num_mel_bins} mels, {config.max_length} frames)")
        self.sample_rate, self.num_mel_bins, self.max_frames = 16_000, config.num_mel_bins, config.max_length
        projection = model.embeddings.patch_embeddings.projection  # input seen as [B, 1, mels, frames]
        self.patch_frames, self.time_stride = projection.kernel_size[1], projection.stride[1]
        freq = (config.num_mel_bins - projection.kernel_size[0]) // projection.stride[0] + 1
        time = (config.max_length - self.patch_frames) // self.time_stride + 1
        self.grid = (freq, time)
        self.embed_dim, self.num_layers = config.hidden_size, config.num_hidden_layers
        self.num_raw_tokens = 1 + freq * time  # merged CLS/distillation token + patches
        self.setup_selection()

    def preprocess(self, item: Any) -> dict[str, Any]:
        """Path, waveform or ``(waveform, sr)`` -> ``{"input_features": [1024, 128], "num_frames": int}``
        (``num_frames``: spectrogram frames of real audio)."""
        wave = self._wave(item)[: AST_FRAME + (self.max_frames - 1) * AST_HOP]
        frames = ast_valid_frames(wave.size, self.max_frames)
        if wave.size < AST_FRAME:
            wave = np.pad(wave, (0, AST_FRAME - wave.size))
        values = self.feature_extractor(wave, sampling_rate=self.sample_rate, return_tensors="np").input_values[0]
        return {"input_features": torch.from_numpy(np.ascontiguousarray(values)).float(), "num_frames": frames}

    def hidden_states(self, media: Any, layers: list[int]) -> tuple[list[Tensor], Tensor | None]:
        """Raw block outputs ``[B, 2 + F*T, D]`` (CLS, distillation, patches) and their mask."""
        features, frames = self._unpack(media, (self.max_frames, self.num_mel_bins))
        blocks = {i: self.model.layers[i] for i in layers}
        captured = self._capture(blocks, lambda: self.model(input_values=features))
        states = [captured[i] for i in layers]
        mask = None
        if frames is not None:
            valid_time = torch.div(frames + self.time_stride - 1, self.time_stride, rounding_mode="floor")
            time = torch.arange(self.grid[0] * self.grid[1], device=features.device) % self.grid[1]
            patches = time[None, :] < valid_time[:, None]
            mask = torch.cat([patches.new_ones(patches.shape[0], 2), patches], dim=1)
        return states, mask

    def final_norm(self, hidden: Tensor) -> Tensor:
        return self.model.layernorm(hidden)

    def _select_tokens(self, tokens: Tensor, mask: Tensor):
        if tokens.shape[2] == self.num_raw_tokens + 1:  # [CLS, DIST, patches] -> [mean(CLS, DIST), patches]
            tokens = torch.cat([tokens[:, :, :2].mean(dim=2, keepdim=True), tokens[:, :, 2:]], dim=2)
            mask = mask[:, 1:]
        return super()._select_tokens(tokens, mask)


# -- construction ----------------------------------------------------------------------------------
def ast_feature_extractor(config: Any):
    """AST's front end built from the model config (AudioSet mean/std; nothing downloaded)."""
    from transformers import ASTFeatureExtractor

    with warnings.catch_warnings():  # 128 Kaldi mel bins over 257 FFT bins leave the lowest filters empty, as in AST
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        return ASTFeatureExtractor(num_mel_bins=config.num_mel_bins, max_length=config.max_length)


def ast_from_pretrained(name_or_dir: str | os.PathLike, dtype: torch.dtype | None = None,
                        **selection: Any) -> ASTAudioEncoder:
    """Zoo prefix ``ast:``: an AST checkpoint (hub id in the offline cache, or a folder), e.g.
    ``ast:MIT/ast-finetuned-audioset-10-10-0.4593``; classification checkpoints load their body."""
    from transformers import ASTFeatureExtractor, ASTModel

    name = str(name_or_dir)
    checkpoint_model_type(name, ("audio-spectrogram-transformer",))
    model = load_checkpoint(ASTModel, name, dtype)
    return ASTAudioEncoder(model, local_extractor(ASTFeatureExtractor, name), name=f"ast:{name}", **selection)
