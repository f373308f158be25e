"""Hugging Face spectrogram transformers as frozen audio encoders: AST (Gong et al., "AST: Audio
Spectrogram Transformer", Interspeech 2021) and CLAP's HTS-AT audio tower (Wu et al., "Large-scale
Contrastive Language-Audio Pretraining", ICASSP 2023; HTS-AT: Chen et al., ICASSP 2022).

Audio goes through :func:`~perceptlm.encoders.whisper.load_waveform` (mono, resampled to the
encoder's rate: AST 16 kHz, CLAP 48 kHz), is cropped to the encoder's window (the first 10.26 s =
1024 frames / 10 s; no random crop, so one file has one encoding) and padded with zeros; the
model's own ``FeatureExtractor`` makes the spectrogram. A token is *valid* (mask True) when its
footprint in the waveform (STFT window -> spectrogram frames -> patch -> patch merging) contains at
least one real sample; attention mixes everything later, as in Whisper's mask.

**AST.** Readable layers: the transformer blocks. Final norm: ``layernorm``. Tokens: AST prepends a
CLS and a distillation token (DeiT initialisation); AST's own pooled output is their mean, so the two
are merged into ONE global token at index 0 (the mean of the two, after the final norm when it is
applied: exactly ``ASTModel``'s ``pooler_output``), followed by the ``F x T`` patch tokens in the
model's order (frequency-major, time fastest; ``grid = (F, T)``, e.g. 12 x 101 for 128 mel bins x
1024 frames). Frames: 25 ms windows every 10 ms without centring (400 / 160 samples); a clip of
``n >= 400`` samples has ``1 + (n - 400) // 160`` real frames (shorter clips are zero-padded to one
frame), the rest of the 1024 frames are padding. Patch column ``t`` covers frames
``[t * time_stride, t * time_stride + 16)``, so it is valid iff ``t * time_stride < frames``.

**CLAP (HTS-AT).** A 4-stage Swin transformer over the mel spectrogram folded into a square image:
the 1001 mel frames (10 s, hop 480, centred 1024-sample Hann windows) are stretched to
``spec_size * freq_ratio`` (1024) frames by bicubic interpolation and cut into ``freq_ratio`` (4)
chunks stacked as row bands. Readable layers: the Swin blocks of ONE stage (``stage``, default the
last, the one CLAP pools: 2 blocks, 8 x 8 tokens, width 768 for the HTS-AT-tiny tower of
``laion/clap-htsat-*``); another stage gives more blocks at a finer grid (stage 2: 6 blocks of
16 x 16 x 384). Final norm: the encoder's
``norm`` (last stage only; it is an error to ask for it on an earlier stage). No CLS token. Tokens
are re-ordered from the folded image into a true ``(frequency, time)`` grid: ``grid = (R / 4,
4 * R)`` for an ``R x R`` stage (8 x 8 -> 2 x 32, as CLAP's own output reshaping), time fastest.
Time token ``t`` covers interpolated frames ``[t * P, (t + 1) * P)`` with ``P = 4 * 2**stage``.
``padding="pad"`` (default) zero-pads short clips so the mask is meaningful; ``"repeatpad"``
(CLAP's pre-training choice) tiles the clip first, and only the zero tail counts as padding. Fused
checkpoints are fed the 4-channel input with ``is_longer=False`` (the crop never exceeds the window).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from perceptlm.encoders.base import PerceptualEncoder
from perceptlm.encoders.whisper import WhisperAudioEncoder, load_waveform

AST_FRAME, AST_HOP = 400, 160  # ASTFeatureExtractor's numpy path: 25 ms / 10 ms at 16 kHz


def ast_valid_frames(num_samples: int, max_frames: int) -> int:
    """Spectrogram frames made only of real audio (uncentred 400-sample windows, hop 160)."""
    return min(1 + (max(num_samples, AST_FRAME) - AST_FRAME) // AST_HOP, max_frames)


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


class _SpectrogramEncoder(PerceptualEncoder):
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


class ASTAudioEncoder(_SpectrogramEncoder):
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


class ClapAudioEncoder(_SpectrogramEncoder):
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
def ast_feature_extractor(config: Any):
    """AST's front end built from the model config (AudioSet mean/std; nothing downloaded)."""
    from transformers import ASTFeatureExtractor

    with warnings.catch_warnings():  # 128 Kaldi mel bins over 257 FFT bins leave the lowest filters empty, as in AST
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        return ASTFeatureExtractor(num_mel_bins=config.num_mel_bins, max_length=config.max_length)


def clap_feature_extractor(config: Any):
    """CLAP's front end built from arguments (48 kHz, hop 480, 1024-point FFT, 10 s, 50 Hz-14 kHz)."""
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=48_000, hop_length=480,
                                max_length_s=10, fft_window_size=1024, frequency_min=50, frequency_max=14_000,
                                truncation="fusion" if config.enable_fusion else "rand_trunc", padding="repeatpad")


def _local_extractor(cls: Any, name: str) -> Any:
    """The checkpoint's own feature extractor when it is on disk (folder or HF cache), else None."""
    try:
        return cls.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return None


def _load(model_class: Any, name: str, dtype: torch.dtype | None, prefix: str = "") -> nn.Module:
    """``model_class.from_pretrained`` from a folder or the local HF cache (never downloads), refusing
    to leave weights at random."""
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


def _model_type(name: str, valid: tuple[str, ...]) -> str:
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


def ast_from_pretrained(name_or_dir: str | os.PathLike, dtype: torch.dtype | None = None,
                        **selection: Any) -> ASTAudioEncoder:
    """Zoo prefix ``ast:``: an AST checkpoint (hub id in the offline cache, or a folder), e.g.
    ``ast:MIT/ast-finetuned-audioset-10-10-0.4593``; classification checkpoints load their body."""
    from transformers import ASTFeatureExtractor, ASTModel

    name = str(name_or_dir)
    _model_type(name, ("audio-spectrogram-transformer",))
    model = _load(ASTModel, name, dtype)
    return ASTAudioEncoder(model, _local_extractor(ASTFeatureExtractor, name), name=f"ast:{name}", **selection)


def clap_from_pretrained(name_or_dir: str | os.PathLike, dtype: torch.dtype | None = None, stage: int = -1,
                         padding: str = "pad", **selection: Any) -> ClapAudioEncoder:
    """Zoo prefix ``clap:``: the audio tower of a CLAP checkpoint, e.g. ``clap:laion/clap-htsat-unfused``
    (a full ``ClapModel`` checkpoint is loaded whole and its ``audio_model`` kept)."""
    from transformers import ClapAudioModel, ClapFeatureExtractor, ClapModel

    name = str(name_or_dir)
    full = _model_type(name, ("clap", "clap_audio_model")) == "clap"
    model = _load(ClapModel, name, dtype, "audio_model.").audio_model if full else _load(ClapAudioModel, name, dtype)
    return ClapAudioEncoder(model.eval(), _local_extractor(ClapFeatureExtractor, name), name=f"clap:{name}",
                            stage=stage, padding=padding, **selection)


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the same weights every time, the caller's RNG untouched
        torch.manual_seed(0)
        return build().eval()


def tiny_ast_model() -> nn.Module:
    """Random-init AST: 2 blocks, width 64, AST's real geometry (128 mels x 1024 frames, 16 x 16
    patches, stride 10 -> 12 x 101 patches)."""
    from transformers import ASTConfig, ASTModel

    config = ASTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return _seeded(lambda: ASTModel(config))


def tiny_clap_model() -> nn.Module:
    """Random-init HTS-AT: 3 stages of 1/1/2 blocks, widths 16/32/64, CLAP's real input geometry
    (64 mels, 1001 -> 1024 frames folded into 256 x 256, 4 x 4 patches): 64x64, 32x32, 16x16 tokens."""
    from transformers import ClapAudioConfig, ClapAudioModel

    config = ClapAudioConfig(patch_embeds_hidden_size=16, depths=[1, 1, 2], num_attention_heads=[2, 2, 4],
                             hidden_size=64, projection_dim=32, enable_fusion=False)
    return _seeded(lambda: ClapAudioModel(config))


def tiny_ast_encoder(**selection: Any) -> ASTAudioEncoder:
    """Zoo entry ``test-tiny-ast``: 1 global + 12 x 101 patch tokens of width 64, 2 readable layers."""
    return ASTAudioEncoder(tiny_ast_model(), name="test-tiny-ast", **selection)


def tiny_clap_encoder(stage: int = -1, padding: str = "pad", **selection: Any) -> ClapAudioEncoder:
    """Zoo entry ``test-tiny-clap``: last stage = 2 blocks of 4 x 64 (frequency x time) tokens, width 64."""
    return ClapAudioEncoder(tiny_clap_model(), name="test-tiny-clap", stage=stage, padding=padding, **selection)
