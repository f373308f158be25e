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
exceeds the window). ``padding="sample_repeat"`` fills a short clip the way DePALM's AudioCaps
loader does (``depalm/data/data/audiocaps.py``): every sample repeated twice (``np.repeat``, which
stretches the clip to twice its length), again until the window is full, then the window's first
samples; nothing is padding.

**Outputs** (``output``):

- ``"blocks"`` (default): the per-block readout above.
- ``"projected"``: CLAP's joint audio-text space, as DePALM reads CLAP (its ``CLAPExtractor``):
  ``1 + F`` tokens of width ``projection_dim`` (1025 x 512 for ``laion/clap-htsat-*``). Token 0 is
  the global embedding (HTS-AT's ``embedding``, the mean of the last stage's normed tokens = the
  transformers ``pooler_output``), tokens ``1..F`` the frame-wise ``fine_grained_embedding``: the
  last stage's normed tokens on the ``(frequency, time)`` grid averaged over frequency, each time
  token repeated for the ``P`` interpolated spectrogram frames it covers (``F = spec_size *
  freq_ratio`` = 1024, ``P`` = 32: 32 distinct vectors, as in HTS-AT's ``interpolate``). Every
  token goes through the checkpoint's ``audio_projection`` (Linear-ReLU-Linear) and is
  L2-normalised. One readable layer, the global token is the CLS token (``cls_index`` 0), a 1-D
  sequence (``grid`` None); the final norm is already inside (``final_norm=False`` is refused).
  Needs a full ``ClapModel`` checkpoint (the projection lives outside the audio tower) and the last
  stage. A frame token is valid when the time token it repeats is.
"""

from __future__ import annotations

import math
import os
import copy
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceptlm.encoders.base import TokenSelection
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


PADDINGS = ("pad", "repeatpad", "sample_repeat")
OUTPUTS = ("blocks", "projected")


def sample_repeat(wave: np.ndarray, length: int) -> np.ndarray:
    """Every sample repeated twice until ``wave`` reaches ``length`` samples, then its first
    ``length`` (a clip already that long is only cropped)."""
    while wave.size < length:
        wave = wave.repeat(2)
    return wave[:length]


class ClapAudioEncoder(SpectrogramEncoder):
    """A transformers ``ClapAudioModel`` (HTS-AT) read per block of one stage or through CLAP's
    projection (see the module docstring). ``stage``: which Swin stage's blocks are readable
    (negative counts from the end); ``padding``: ``"pad"``, ``"repeatpad"`` or ``"sample_repeat"``
    for clips shorter than the window; ``output``: ``"blocks"`` or ``"projected"`` (which needs
    ``projection``, the ``ClapModel``'s ``audio_projection``)."""

    has_cls = False

    def __init__(self, model: nn.Module, feature_extractor: Any = None, name: str = "clap", stage: int = -1,
                 padding: str = "pad", output: str = "blocks", projection: nn.Module | None = None,
                 **selection: Any) -> None:
        super().__init__(**selection)
        config, encoder = model.config, model.audio_encoder
        self.model, self.name = model, name
        self.projection = projection
        self.feature_extractor = feature_extractor or clap_feature_extractor(config)
        fe = self.feature_extractor
        depth = len(config.depths)
        if not -depth <= stage < depth:
            raise ValueError(f"{name}: stage={stage} is out of range; HTS-AT has {depth} stages "
                             f"(valid: 0..{depth - 1} or -{depth}..-1)")
        if padding not in PADDINGS:
            raise ValueError(f"{name}: padding={padding!r} is unknown; valid: {', '.join(map(repr, PADDINGS))}")
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
        self.stage_grid = (rows // self.freq_ratio, cols * self.freq_ratio)  # (frequency, time)
        self.frames_per_token = stride[1] * 2 ** self.stage
        self.stage_width = config.patch_embeds_hidden_size * 2 ** self.stage
        self._configure(output)
        self.setup_selection()

    def _configure(self, output: str) -> None:
        """The readable layers, token count, width and grid of ``output``."""
        if output not in OUTPUTS:
            raise ValueError(f"{self.name}: output={output!r} is unknown; valid: {', '.join(map(repr, OUTPUTS))}")
        self.output = output
        if output == "blocks":
            self.has_cls, self.grid = False, self.stage_grid
            self.embed_dim, self.num_layers = self.stage_width, self.model.config.depths[self.stage]
            self.num_raw_tokens = self.stage_grid[0] * self.stage_grid[1]
            return
        if self.projection is None:
            raise ValueError(f"{self.name}: output='projected' needs CLAP's audio projection, which a bare audio "
                             "tower lacks; load a full ClapModel checkpoint (e.g. clap:laion/clap-htsat-unfused)")
        if not self.is_last_stage:
            raise ValueError(f"{self.name}: output='projected' reads the last stage; stage={self.stage} is not it")
        self.has_cls, self.grid, self.num_layers = True, None, 1
        self.embed_dim = int(self.projection.linear2.out_features)
        self.num_raw_tokens = 1 + self.stage_grid[1] * self.frames_per_token

    def setup_selection(self) -> None:
        if self.output == "projected" and not self.apply_final_norm:
            raise ValueError(f"{self.name}: output='projected' is normed, projected and L2-normalised; there is "
                             "no final norm to leave out (pass final_norm=True or output='blocks')")
        if self.apply_final_norm and not self.is_last_stage:
            raise ValueError(f"{self.name}: the final norm belongs to the last stage; with stage={self.stage} "
                             f"pass final_norm=False (or read stage -1)")
        super().setup_selection()

    def with_selection(self, layers: int | Sequence[int] | None = None, tokens: TokenSelection | None = None,
                       final_norm: bool | None = None, output: str | None = None) -> "ClapAudioEncoder":
        """A view with another selection or output; the weights are shared."""
        view = copy.copy(self)
        view._configure(output or self.output)
        view.layer_spec = self.layer_spec if layers is None else layers
        view.token_selection = self.token_selection if tokens is None else tokens
        view.apply_final_norm = self.apply_final_norm if final_norm is None else final_norm
        view.setup_selection()
        return view

    def preprocess(self, item: Any) -> dict[str, Any]:
        """Path, waveform or ``(waveform, sr)`` -> ``{"input_features": [C, 1001, 64], "num_frames": int}``
        (``C`` = 4 for fused checkpoints, else 1; ``num_frames``: mel frames that read real audio)."""
        from transformers.audio_utils import window_function

        wave = self._wave(item)[: self.max_samples]
        padding = self.padding
        if padding == "sample_repeat":
            wave, padding = sample_repeat(wave, self.max_samples), "pad"
        real = wave.size if padding == "pad" else wave.size * (self.max_samples // wave.size)
        features = self.feature_extractor(wave, sampling_rate=self.sample_rate, truncation=self.truncation,
                                          padding=padding, return_tensors="np").input_features[0]
        window = window_function(self.n_fft, "hann")  # the extractor's window
        frames = stft_valid_frames(real, self.max_samples, self.n_fft, self.hop_length, window)
        return {"input_features": torch.from_numpy(np.ascontiguousarray(features)).float(), "num_frames": frames}

    def hidden_states(self, media: Any, layers: list[int]) -> tuple[list[Tensor], Tensor | None]:
        """Block outputs of the stage re-ordered to the ``(frequency, time)`` grid (or the projected
        global + frame-wise embeddings), and their mask."""
        features, frames = self._unpack(media, (self.channels, self.mel_frames, self.num_mel_bins))
        is_longer = torch.zeros(features.shape[0], 1, dtype=torch.bool, device=features.device)
        if self.output == "projected":
            states = [self._projected(self.model(input_features=features, is_longer=is_longer))]
        else:
            blocks = {i: self.model.audio_encoder.layers[self.stage].blocks[i] for i in layers}
            captured = self._capture(blocks, lambda: self.model(input_features=features, is_longer=is_longer))
            states = [self._to_grid(captured[i]) for i in layers]
        return states, None if frames is None else self._mask(frames)

    def _mask(self, frames: Tensor) -> Tensor:
        """Validity of the tokens from the clips' valid spectrogram frames: a token is valid when its
        time column reads one."""
        valid = [bicubic_valid_frames(int(f), self.mel_frames, self.spec_frames) for f in frames.tolist()]
        valid_time = torch.tensor([math.ceil(v / self.frames_per_token) for v in valid], device=frames.device)
        if self.output == "projected":
            time = torch.arange(self.num_raw_tokens - 1, device=frames.device) // self.frames_per_token
            keep = time[None, :] < valid_time[:, None]
            return torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
        time = torch.arange(self.num_raw_tokens, device=frames.device) % self.grid[1]
        return time[None, :] < valid_time[:, None]

    def _projected(self, outputs: Any) -> Tensor:
        """``[B, 1 + F, projection_dim]``: the projected, L2-normalised global and frame-wise embeddings."""
        grouped = outputs.last_hidden_state  # [B, D, frequency, time], the normed last stage
        if tuple(grouped.shape[2:]) != self.stage_grid:
            raise RuntimeError(f"{self.name}: the last stage gave a {tuple(grouped.shape[2:])} map, "
                               f"expected {self.stage_grid}")
        tokens = torch.cat([outputs.pooler_output[:, None], grouped.mean(dim=2).transpose(1, 2)], dim=1)
        tokens = F.normalize(self.projection(tokens), dim=-1)  # per token, so project before repeating
        frames = tokens[:, 1:].repeat_interleave(self.frames_per_token, dim=1)
        return torch.cat([tokens[:, :1], frames], dim=1)

    def _to_grid(self, hidden: Tensor) -> Tensor:
        """Folded-image order (row = chunk * F + frequency, column = time in chunk) -> frequency-major
        ``(F, chunks * columns)`` order."""
        batch, count, dim = hidden.shape
        cols = self.stage_grid[1] // self.freq_ratio
        image = hidden.reshape(batch, self.freq_ratio, self.stage_grid[0], cols, dim)
        return image.permute(0, 2, 1, 3, 4).reshape(batch, count, dim)

    def final_norm(self, hidden: Tensor) -> Tensor:
        """The encoder's ``norm`` (identity for ``output="projected"``, which is normed inside)."""
        return hidden if self.output == "projected" else self.model.audio_encoder.norm(hidden)


# -- construction ----------------------------------------------------------------------------------
def clap_feature_extractor(config: Any):
    """CLAP's front end built from arguments (48 kHz, hop 480, 1024-point FFT, 10 s, 50 Hz-14 kHz)."""
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=48_000, hop_length=480,
                                max_length_s=10, fft_window_size=1024, frequency_min=50, frequency_max=14_000,
                                truncation="fusion" if config.enable_fusion else "rand_trunc", padding="repeatpad")


def clap_from_pretrained(name_or_dir: str | os.PathLike, dtype: torch.dtype | None = None, stage: int = -1,
                         padding: str = "pad", output: str = "blocks", **selection: Any) -> ClapAudioEncoder:
    """Zoo prefix ``clap:``: the audio tower of a CLAP checkpoint, e.g. ``clap:laion/clap-htsat-unfused``
    (a full ``ClapModel`` checkpoint is loaded whole and its ``audio_model`` and ``audio_projection``
    kept). ``output="projected"`` (CLAP's joint space, see the module docstring) needs a full one."""
    from transformers import ClapAudioModel, ClapFeatureExtractor, ClapModel

    name = str(name_or_dir)
    full = checkpoint_model_type(name, ("clap", "clap_audio_model")) == "clap"
    projection = None
    if full:
        clap = load_checkpoint(ClapModel, name, dtype, ("audio_model.", "audio_projection."))
        model, projection = clap.audio_model, clap.audio_projection.eval()
    else:
        model = load_checkpoint(ClapAudioModel, name, dtype)
    return ClapAudioEncoder(model.eval(), local_extractor(ClapFeatureExtractor, name), name=f"clap:{name}",
                            stage=stage, padding=padding, output=output, projection=projection, **selection)
