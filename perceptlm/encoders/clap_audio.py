"""CLAP's HTS-AT audio tower (Wu et al., "Large-scale Contrastive Language-Audio Pretraining", ICASSP
2023; HTS-AT: Chen et al., ICASSP 2022) as a frozen audio encoder.

Audio handling and token validity are shared with AST (:mod:`perceptlm.encoders.spectrogram`).

**CLAP (HTS-AT).** A 4-stage Swin transformer over the mel spectrogram folded into a square image:
the 1001 mel frames (10 s, hop 480, centred 1024-sample Hann windows) are stretched to ``spec_size *
freq_ratio`` (1024) frames by bicubic interpolation and cut into ``freq_ratio`` (4) chunks stacked
as row bands. Readable layers: the Swin blocks of ONE stage (``stage``, default the last, the one
CLAP pools: 2 blocks, 8 x 8 tokens, width 768 for the HTS-AT-tiny tower of ``laion/clap-htsat-*``);
another stage gives more blocks at a finer grid (stage 2: 6 blocks of 16 x 16 x 384). Final norm:
the encoder's ``norm`` (last stage only; it is an error to ask for it on an earlier stage). No CLS
token. Tokens are re-ordered from the folded image into a true ``(frequency, time)`` grid: ``grid =
(R / 4, 4 * R)`` for an ``R x R`` stage (8 x 8 -> 2 x 32, as CLAP's own output reshaping), time
fastest. Time token ``t`` covers interpolated frames ``[t * P, (t + 1) * P)`` with ``P = 4 *
2**stage``. ``padding="pad"`` (default) zero-pads short clips so the mask is meaningful;
``"repeatpad"`` (CLAP's pre-training choice) tiles the clip first, and only the zero tail counts as
padding. Fused checkpoints are fed the 4-channel input with ``is_longer=False`` (the crop never
exceeds the window).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from perceptlm.encoders.spectrogram import SpectrogramEncoder, checkpoint_model_type, load_checkpoint, local_extractor


def stft_valid_frames(num_real: int, total: int, n_fft: int, hop: int, window: np.ndarray) -> int:
    """Centred STFT (reflect padding) over ``total`` samples whose first ``num_real`` are real: the
    frames whose non-zero window taps reach a real sample (a valid prefix of the frames)."""
    taps = np.flatnonzero(window)
    starts = np.arange(1 + total // hop) * hop - n_fft // 2
    first, last = starts + taps[0], starts + taps[-1]
    # a tap past the end reflects back to 2 * (total - 1) - position
    lowest = np.minimum(np.maximum(first, 0), np.where(last > total - 1, 2 * (total - 1) - last, total))
    return int(np.sum(lowest < num_real))


def bicubic_valid_frames(valid: int, size_in: int, size_out: int) -> int:
    """Frames of a bicubic, ``align_corners=True`` resize (as HTS-AT's) that read a valid input
    frame: output ``u`` reads frames ``floor(x)-1 .. floor(x)+2`` at ``x = u (in-1)/(out-1)`` (only
    ``floor(x)`` when ``x`` is whole: the other weights are exactly zero)."""
    if size_in == size_out:
        return valid
    scale = torch.tensor((size_in - 1) / (size_out - 1), dtype=torch.float32)
    position = torch.arange(size_out, dtype=torch.float32) * scale
    base = torch.floor(position)
    lowest = torch.where(position == base, base, base - 1).clamp(min=0)
    return int((lowest < valid).sum())


class ClapAudioEncoder(SpectrogramEncoder):
    """A transformers ``ClapAudioModel`` (HTS-AT) with per-block readout of one stage (see the module
    docstring). ``stage``: which Swin stage's blocks are readable (negative counts from the end);
    ``padding``: ``"pad"`` or ``"repeatpad"`` for clips shorter than the window."""

    has_cls = False

    def __init__(self, model: nn.Module, feature_extractor: Any = None, name: str = "clap", stage: int = -1,
                 padding: str = "pad", **selection: Any) -> None:
        super().__init__(**selection)
        config, encoder = model.config, model.audio_encoder
        self.model, self.name = model, name
        self.feature_extractor = feature_extractor or clap_feature_extractor(config)
        fe = self.feature_extractor
        depth = len(config.depths)
        if not -depth <= stage < depth:
            raise ValueError(f"{name}: stage={stage} is out of range; HTS-AT has {depth} stages "
                             f"(valid: 0..{depth - 1} or -{depth}..-1)")
        if padding not in ("pad", "repeatpad"):
            raise ValueError(f"{name}: padding={padding!r} is unknown; valid: 'pad', 'repeatpad'")
        self.stage, self.padding = stage % depth, padding
        self.is_last_stage = self.stage == depth - 1
        stride, kernel = tuple(encoder.patch_embed.proj.stride), tuple(encoder.patch_embed.proj.kernel_size)
        if stride != kernel or stride[0] != stride[1]:
            raise ValueError(f"{name}: only non-overlapping square patches are supported "
                             f"(patch_size {kernel}, patch_stride {stride})")
        if fe.feature_size != config.num_mel_bins:
            raise ValueError(f"{name}: feature extractor makes {fe.feature_size} mel bins, the model takes "
                             f"{config.num_mel_bins}")
        self.sample_rate, self.num_mel_bins, self.hop_length = fe.sampling_rate, config.num_mel_bins, fe.hop_length
        self.n_fft, self.max_samples = fe.fft_window_size, int(fe.nb_max_samples)
        self.truncation = "fusion" if config.enable_fusion else "rand_trunc"
        self.channels = 4 if config.enable_fusion else 1
        self.mel_frames = 1 + self.max_samples // self.hop_length
        self.freq_ratio = encoder.freq_ratio
        self.spec_frames = config.spec_size * self.freq_ratio  # frames after the bicubic stretch
        if self.mel_frames > self.spec_frames:
            raise ValueError(f"{name}: {self.mel_frames} mel frames do not fit HTS-AT's {self.spec_frames}")
        rows, cols = encoder.input_resolutions[self.stage]
        if rows % self.freq_ratio:
            raise ValueError(f"{name}: stage {self.stage} ({rows} x {cols}) mixes time chunks in one token")
        self.grid = (rows // self.freq_ratio, cols * self.freq_ratio)  # (frequency, time)
        self.frames_per_token = stride[1] * 2 ** self.stage
        self.embed_dim = config.patch_embeds_hidden_size * 2 ** self.stage
        self.num_layers = config.depths[self.stage]
        self.num_raw_tokens = rows * cols
        self.setup_selection()

    def setup_selection(self) -> None:
        if self.apply_final_norm and not self.is_last_stage:
            raise ValueError(f"{self.name}: the final norm belongs to the last stage; with stage={self.stage} "
                             f"pass final_norm=False (or read stage -1)")
        super().setup_selection()

    def preprocess(self, item: Any) -> dict[str, Any]:
        """Path, waveform or ``(waveform, sr)`` -> ``{"input_features": [C, 1001, 64], "num_frames": int}``
        (``C`` = 4 for fused checkpoints, else 1; ``num_frames``: mel frames that read real audio)."""
        from transformers.audio_utils import window_function

        wave = self._wave(item)[: self.max_samples]
        real = wave.size if self.padding == "pad" else wave.size * (self.max_samples // wave.size)
        features = self.feature_extractor(wave, sampling_rate=self.sample_rate, truncation=self.truncation,
                                          padding=self.padding, return_tensors="np").input_features[0]
        window = window_function(self.n_fft, "hann")  # the extractor's window
        frames = stft_valid_frames(real, self.max_samples, self.n_fft, self.hop_length, window)
        return {"input_features": torch.from_numpy(np.ascontiguousarray(features)).float(), "num_frames": frames}

    def hidden_states(self, media: Any, layers: list[int]) -> tuple[list[Tensor], Tensor | None]:
        """Block outputs of the stage, re-ordered to the ``(frequency, time)`` grid, and their mask."""
        features, frames = self._unpack(media, (self.channels, self.mel_frames, self.num_mel_bins))
        encoder = self.model.audio_encoder
        blocks = {i: encoder.layers[self.stage].blocks[i] for i in layers}
        is_longer = torch.zeros(features.shape[0], 1, dtype=torch.bool, device=features.device)
        captured = self._capture(blocks, lambda: self.model(input_features=features, is_longer=is_longer))
        states = [self._to_grid(captured[i]) for i in layers]
        mask = None
        if frames is not None:
            valid = [bicubic_valid_frames(int(f), self.mel_frames, self.spec_frames) for f in frames.tolist()]
            valid_time = torch.tensor([math.ceil(v / self.frames_per_token) for v in valid], device=features.device)
            time = torch.arange(self.num_raw_tokens, device=features.device) % self.grid[1]
            mask = time[None, :] < valid_time[:, None]
        return states, mask

    def _to_grid(self, hidden: Tensor) -> Tensor:
        """Folded-image order (row = chunk * F + frequency, column = time in chunk) -> frequency-major
        ``(F, chunks * columns)`` order."""
        batch, _, dim = hidden.shape
        cols = self.grid[1] // self.freq_ratio
        image = hidden.reshape(batch, self.freq_ratio, self.grid[0], cols, dim)
        return image.permute(0, 2, 1, 3, 4).reshape(batch, self.num_raw_tokens, dim)

    def final_norm(self, hidden: Tensor) -> Tensor:
        return self.model.audio_encoder.norm(hidden)


# -- construction ----------------------------------------------------------------------------------
def clap_feature_extractor(config: Any):
    """CLAP's front end built from arguments (48 kHz, hop 480, 1024-point FFT, 10 s, 50 Hz-14 kHz)."""
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=48_000, hop_length=480,
                                max_length_s=10, fft_window_size=1024, frequency_min=50, frequency_max=14_000,
                                truncation="fusion" if config.enable_fusion else "rand_trunc", padding="repeatpad")


def clap_from_pretrained(name_or_dir: str | os.PathLike, dtype: torch.dtype | None = None, stage: int = -1,
                         padding: str = "pad", **selection: Any) -> ClapAudioEncoder:
    """Zoo prefix ``clap:``: the audio tower of a CLAP checkpoint, e.g. ``clap:laion/clap-htsat-unfused``
    (a full ``ClapModel`` checkpoint is loaded whole and its ``audio_model`` kept)."""
    from transformers import ClapAudioModel, ClapFeatureExtractor, ClapModel

    name = str(name_or_dir)
    full = checkpoint_model_type(name, ("clap", "clap_audio_model")) == "clap"
    if full:
        model = load_checkpoint(ClapModel, name, dtype, "audio_model.").audio_model
    else:
        model = load_checkpoint(ClapAudioModel, name, dtype)
    return ClapAudioEncoder(model.eval(), local_extractor(ClapFeatureExtractor, name), name=f"clap:{name}",
                            stage=stage, padding=padding, **selection)
