"""Video encoders: any image encoder run on every frame with temporal aggregation
(:class:`VideoFrameEncoder`), and TimeSformer (Bertasius, Wang & Torresani, "Is Space-Time
Attention All You Need for Video Understanding?", ICML 2021), DePALM's video backbone
(:class:`TimeSformerEncoder`).

Media are ``[B, T, 3, H, W]`` (``preprocess`` maps ``[T, H, W, 3]`` uint8 frames to ``[T, 3, S, S]``;
frames are read by :func:`perceptlm.data.video.load_video`). Token layout, shared by both:

- ``temporal="concat"``: the CLS token first, then the patch tokens of frame 0, frame 1, ...
  (frame-major), ``1 + T * P`` tokens (DePALM: "TimeSformer 1+16x196"); ``grid`` is None, so token
  resamplers group consecutive tokens. For a per-frame image encoder the CLS token is the mean of
  the frames' CLS tokens. Without a CLS token (e.g. SigLIP) it is ``T * P`` patch tokens.
- ``temporal="mean"``: every token averaged over the frames, the image layout and ``grid``
  (DePALM: "197 when averaged over time").

TimeSformer only: ``token_order="patch"`` keeps the model's own patch-major order for ``concat``
(patch ``p`` of frame ``t`` at ``1 + p*T + t``), the order DePALM's TimeSformer reading hands on,
with ``grid`` ``(T * 14, 14)`` as DePALM declares it (its ``tokens_grid`` with the rows times the
frames), so token resamplers group the sequence into the same 2x2 "windows" as DePALM's;
``temporal="reshape_mean"`` is what DePALM's ``timesformer_avg`` computes (``video.py``,
``TimeSFormerExtractor``): the patch-major patch tokens cut into ``T`` consecutive runs of ``P`` and
the runs averaged, so token ``j`` is the mean of sequence positions ``j, P + j, ..., (T-1)P + j``,
i.e. of (patch ``(aP + j) // T``, frame ``(aP + j) % T``) for ``a < T``: patches from all over the
frame, not patch ``j`` over time (197 tokens, ``grid`` the patch grid as DePALM declares it).

Selection is the image encoder's: the last ``k`` (or listed) blocks, CLS / patches / all, and the
final norm, applied to every frame's tokens before the temporal aggregation (so each frame's
features are exactly the image encoder's). With ``tokens="patches"`` and ``concat`` the result is
the ``T * P`` patch tokens; with ``"cls"`` the (frame-averaged) CLS token.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from perceptlm.encoders.base import PerceptualEncoder, TokenSelection
from perceptlm.encoders.efficientnet import image_to_tensor
from perceptlm.encoders.hf_vision import PIL_RESAMPLE, local_processor_config

TEMPORAL = ("mean", "concat")
TIMESFORMER_TEMPORAL = (*TEMPORAL, "reshape_mean")
TOKEN_ORDERS = ("frame", "patch")
DEFAULT_NUM_FRAMES = 16  # DePALM's MSR-VTT protocol


def _frames_array(frames: Any, num_frames: int, name: str) -> Any:
    if isinstance(frames, Tensor):
        frames = frames.cpu().numpy()
    if len(frames) != num_frames:
        raise ValueError(f"{name}: got {len(frames)} frames, this encoder takes num_frames={num_frames}")
    return frames


def _check_media(media: Tensor, num_frames: int, name: str) -> None:
    if media.ndim != 5 or media.shape[1] != num_frames:
        raise ValueError(f"{name}: expected frames [B, {num_frames}, 3, H, W], got {tuple(media.shape)}")


def aggregate_frames(tokens: Tensor, temporal: str, has_cls: bool, mask: Tensor | None = None) -> Tensor:
    """``[B, T, N, D]`` per-frame tokens -> ``[B, N', D]`` (see the module docstring); ``mask``
    ``[B, T, N]`` excludes invalid tokens from the means."""
    weights = torch.ones_like(tokens[..., :1]) if mask is None else mask.unsqueeze(-1).to(tokens.dtype)

    def mean(x: Tensor, w: Tensor) -> Tensor:
        return (x * w).sum(1) / w.sum(1).clamp(min=1)

    if temporal == "mean":
        return mean(tokens, weights)
    patches = tokens[:, :, int(has_cls):].flatten(1, 2)
    return torch.cat([mean(tokens[:, :, :1], weights[:, :, :1]), patches], 1) if has_cls else patches


def aggregate_mask(mask: Tensor, temporal: str, has_cls: bool) -> Tensor:
    """``[B, T, N]`` per-frame validity -> the ``[B, N']`` validity of :func:`aggregate_frames`."""
    if temporal == "mean":
        return mask.any(1)
    patches = mask[:, :, int(has_cls):].flatten(1, 2)
    return torch.cat([mask[:, :, :1].any(1), patches], 1) if has_cls else patches


def _check_temporal(temporal: str, num_frames: int, valid: tuple[str, ...] = TEMPORAL) -> None:
    if temporal not in valid:
        raise ValueError(f"temporal={temporal!r} is not a temporal aggregation; valid: {valid}")
    if int(num_frames) < 1:
        raise ValueError(f"num_frames={num_frames} must be >= 1")


class VideoFrameEncoder(PerceptualEncoder):
    """Any image :class:`PerceptualEncoder` run on the ``B * T`` frames in one batch, then
    aggregated over time (``temporal``: ``"mean"`` or ``"concat"``, see the module docstring)."""

    modality = "video"

    def __init__(self, image_encoder: PerceptualEncoder, num_frames: int = DEFAULT_NUM_FRAMES,
                 temporal: str = "mean", **selection: Any) -> None:
        super().__init__(**selection)
        if not isinstance(image_encoder, PerceptualEncoder) or image_encoder.modality != "image":
            raise ValueError(f"VideoFrameEncoder wraps an image PerceptualEncoder, got {image_encoder!r}")
        if self.trainable and not image_encoder.trainable:
            raise ValueError(f"{image_encoder.name} is frozen: load it with trainable=True to train the video encoder")
        self.image_encoder = image_encoder
        self.name = f"video:{image_encoder.name}"
        self.embed_dim = image_encoder.embed_dim
        self.num_layers = image_encoder.num_layers
        self.has_cls = image_encoder.has_cls
        self._configure(num_frames, temporal)
        self.setup_selection()

    def _configure(self, num_frames: int, temporal: str) -> None:
        _check_temporal(temporal, num_frames)
        self.num_frames, self.temporal = int(num_frames), temporal
        image = self.image_encoder
        if temporal == "mean":
            self.grid, self.num_raw_tokens = image.grid, image.num_raw_tokens
        else:
            patches = image.num_raw_tokens - int(image.has_cls)
            self.grid, self.num_raw_tokens = None, int(image.has_cls) + self.num_frames * patches

    def with_selection(self, layers: int | Sequence[int] | None = None, tokens: TokenSelection | None = None,
                       final_norm: bool | None = None, num_frames: int | None = None,
                       temporal: str | None = None) -> "VideoFrameEncoder":
        """A view with another selection, frame count or aggregation; the weights are shared."""
        view = super().with_selection(layers, tokens, final_norm)
        view._configure(self.num_frames if num_frames is None else num_frames, temporal or self.temporal)
        return view

    def hidden_states(self, media: Tensor, layers: list[int]) -> tuple[list[Tensor], Tensor | None]:
        _check_media(media, self.num_frames, self.name)
        batch, frames = media.shape[:2]
        image = self.image_encoder
        states, mask = image.hidden_states(media.flatten(0, 1), layers)
        if self.apply_final_norm:
            states = [image.final_norm(s) for s in states]
        frame_mask = None if mask is None else mask.unflatten(0, (batch, frames))
        states = [aggregate_frames(s.unflatten(0, (batch, frames)), self.temporal, self.has_cls, frame_mask)
                  for s in states]
        return states, None if frame_mask is None else aggregate_mask(frame_mask, self.temporal, self.has_cls)

    def final_norm(self, hidden: Tensor) -> Tensor:
        """Identity: the image encoder's final norm is applied per frame in :meth:`hidden_states`."""
        return hidden

    def preprocess(self, item: Any) -> Tensor:
        """``[T, H, W, 3]`` uint8 frames (array, tensor or list of PIL images) -> ``[T, 3, S, S]`` with
        the image encoder's preprocessing on every frame."""
        frames = _frames_array(item, self.num_frames, self.name)
        return torch.stack([self.image_encoder.preprocess(frame) for frame in frames])

    def preprocess_config(self) -> dict[str, Any]:
        return {**super().preprocess_config(), "frames": self.image_encoder.preprocess_config()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_frames={self.num_frames}, temporal={self.temporal!r}"


class TimeSformerEncoder(PerceptualEncoder):
    """transformers' ``TimesformerModel`` with per-block readout.

    Readable layers: the encoder blocks (``hidden_states[1:]`` of ``output_hidden_states=True``);
    final norm: the model's ``layernorm``, applied per block output (as TimeSformer's own
    ``return_hidden_state`` readout in DePALM does). The model reads ``config.num_frames`` frames of
    ``config.image_size`` pixels; ``num_frames`` other than the checkpoint's resizes its time
    embeddings once, at construction, by nearest interpolation (as TimeSformer's ``load_pretrained``:
    8 -> 16 repeats each embedding twice) and sets ``config.num_frames`` (the model is changed in
    place). Its patch tokens come patch-major (position ``p``, frame ``t`` at ``1 + p*T + t``); they
    are reordered frame-major unless ``token_order="patch"`` (see the module docstring).
    Preprocessing: plain resize to ``image_size`` (no crop), mean/std from the checkpoint's
    ``preprocessor_config.json`` when cached locally, else 0.45 / 0.225 (the released checkpoints'
    values); ``image_mean``/``image_std``/``resample`` override them.
    """

    modality = "video"
    has_cls = True

    def __init__(self, model: nn.Module, name: str | None = None, temporal: str = "concat",
                 image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None,
                 resample: str | None = None, num_frames: int | None = None, token_order: str = "frame",
                 **selection: Any) -> None:
        super().__init__(**selection)
        config = model.config
        if config.model_type != "timesformer":
            raise ValueError(f"TimeSformerEncoder needs a TimesformerModel, got model_type {config.model_type!r}")
        if num_frames is not None and int(num_frames) != config.num_frames:
            resize_time_embeddings(model, int(num_frames))
        self.model = model
        self.name = name or getattr(config, "name_or_path", "") or "timesformer"
        self.embed_dim = config.hidden_size
        self.num_layers = config.num_hidden_layers
        self.image_size = int(config.image_size)
        side = self.image_size // config.patch_size
        self.patch_grid = (side, side)
        self.image_mean = tuple(image_mean or (0.45, 0.45, 0.45))
        self.image_std = tuple(image_std or (0.225, 0.225, 0.225))
        self.resample = resample or "bilinear"
        self._configure(config.num_frames, temporal, token_order)
        self.setup_selection()

    def _configure(self, num_frames: int, temporal: str, token_order: str) -> None:
        _check_temporal(temporal, num_frames, TIMESFORMER_TEMPORAL)
        if token_order not in TOKEN_ORDERS:
            raise ValueError(f"token_order={token_order!r} is unknown; valid: {TOKEN_ORDERS}")
        if num_frames != self.model.config.num_frames:
            raise ValueError(
                f"{self.name} reads exactly {self.model.config.num_frames} frames, not num_frames={num_frames}; "
                f"load it with num_frames={num_frames} (its time embeddings are resized at load)"
            )
        self.num_frames, self.temporal, self.token_order = int(num_frames), temporal, token_order
        patches = self.patch_grid[0] * self.patch_grid[1]
        if temporal in ("mean", "reshape_mean"):
            self.grid, self.num_raw_tokens = self.patch_grid, 1 + patches
        elif token_order == "patch":  # DePALM's declared layout: its tokens_grid rows times the frames
            rows, columns = self.patch_grid
            self.grid, self.num_raw_tokens = (self.num_frames * rows, columns), 1 + self.num_frames * patches
        else:
            self.grid, self.num_raw_tokens = None, 1 + self.num_frames * patches

    @classmethod
    def from_pretrained(cls, name_or_dir: str, temporal: str = "concat", num_frames: int | None = None,
                        torch_dtype: torch.dtype | None = None, image_mean: Sequence[float] | None = None,
                        image_std: Sequence[float] | None = None, resample: str | None = None,
                        token_order: str = "frame", **selection: Any) -> "TimeSformerEncoder":
        """A TimeSformer checkpoint (hub id or local folder; a video-classification checkpoint loads
        its backbone) from local files only: nothing is downloaded. ``image_mean``, ``image_std`` and
        ``resample`` replace the checkpoint's preprocessing values."""
        from transformers import TimesformerModel

        extra: dict[str, Any] = {} if torch_dtype is None else {"dtype": torch_dtype}
        try:
            model = TimesformerModel.from_pretrained(name_or_dir, local_files_only=True, **extra)
        except OSError as error:
            raise ValueError(
                f"cannot load TimeSformer {name_or_dir!r}: not a local folder and not in the local Hugging Face "
                f"cache (download it beforehand, e.g. `huggingface-cli download {name_or_dir}`): {error}"
            ) from None
        processor = local_processor_config(str(name_or_dir))
        return cls(model.eval(), name=str(name_or_dir), temporal=temporal,
                   image_mean=image_mean or processor.get("image_mean"),
                   image_std=image_std or processor.get("image_std"),
                   resample=resample or PIL_RESAMPLE.get(processor.get("resample")),
                   num_frames=num_frames, token_order=token_order, **selection)

    def with_selection(self, layers: int | Sequence[int] | None = None, tokens: TokenSelection | None = None,
                       final_norm: bool | None = None, num_frames: int | None = None,
                       temporal: str | None = None, token_order: str | None = None) -> "TimeSformerEncoder":
        """A view with another selection, aggregation or token order (the frame count is the loaded
        model's)."""
        view = super().with_selection(layers, tokens, final_norm)
        view._configure(self.num_frames if num_frames is None else num_frames, temporal or self.temporal,
                        token_order or self.token_order)
        return view

    def hidden_states(self, media: Tensor, layers: list[int]) -> tuple[list[Tensor], Tensor | None]:
        _check_media(media, self.num_frames, self.name)
        if tuple(media.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"{self.name}: frames are {tuple(media.shape[-2:])}, expected {self.image_size}px (see preprocess)"
            )
        dtype = next(self.model.parameters()).dtype
        blocks = self.model(pixel_values=media.to(dtype), output_hidden_states=True).hidden_states[1:]
        if len(blocks) != self.num_layers:
            raise RuntimeError(f"{self.name}: got {len(blocks)} block outputs, expected {self.num_layers}")
        states = []
        for index in layers:
            tokens = blocks[index]
            if self.apply_final_norm:
                tokens = self.model.layernorm(tokens)  # per token, before any temporal averaging
            if self.temporal == "reshape_mean":
                runs = tokens[:, 1:].unflatten(1, (self.num_frames, -1))  # [B, T, P, D] of the patch-major sequence
                states.append(torch.cat([tokens[:, :1], runs.mean(dim=1)], dim=1))
            elif self.temporal == "concat" and self.token_order == "patch":
                states.append(tokens)
            else:
                per_frame = frame_major(tokens, self.num_frames)  # [B, T, 1 + P, D], CLS repeated per frame
                states.append(aggregate_frames(per_frame, self.temporal, has_cls=True))
        return states, None

    def final_norm(self, hidden: Tensor) -> Tensor:
        """Identity: the model's ``layernorm`` is applied per token in :meth:`hidden_states`."""
        return hidden

    def preprocess(self, item: Any) -> Tensor:
        """``[T, H, W, 3]`` uint8 frames -> ``[T, 3, S, S]``: plain resize, scale to [0, 1], mean/std."""
        frames = _frames_array(item, self.num_frames, self.name)
        size = (self.image_size, self.image_size)
        return torch.stack([image_to_tensor(f, size, self.image_mean, self.image_std, self.resample) for f in frames])

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_frames={self.num_frames}, temporal={self.temporal!r}, "
                f"token_order={self.token_order!r}")


def resize_time_embeddings(model: nn.Module, num_frames: int) -> None:
    """Give a ``TimesformerModel`` ``num_frames`` time embeddings by nearest interpolation of its own
    (TimeSformer's ``load_pretrained``), and make its blocks expect ``num_frames`` frames."""
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames} must be >= 1")
    embeddings = model.embeddings
    old = embeddings.time_embeddings
    with torch.no_grad():
        new = nn.functional.interpolate(old.detach().transpose(1, 2), size=num_frames, mode="nearest").transpose(1, 2)
    embeddings.time_embeddings = nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)
    configs = {id(m.config): m.config for m in model.modules() if getattr(m, "config", None) is not None}
    for config in configs.values():  # the blocks read the frame count from their config
        config.num_frames = num_frames


def frame_major(tokens: Tensor, num_frames: int) -> Tensor:
    """TimeSformer's ``[B, 1 + P*T, D]`` (CLS, then patch-major) -> ``[B, T, 1 + P, D]``: per frame, the
    shared CLS token followed by that frame's patch tokens."""
    batch, count, dim = tokens.shape
    patches = tokens[:, 1:].unflatten(1, ((count - 1) // num_frames, num_frames)).transpose(1, 2)
    return torch.cat([tokens[:, None, :1].expand(batch, num_frames, 1, dim), patches], 2)


# -- zoo entries ----------------------------------------------------------------------------------
def video_encoder(image: PerceptualEncoder | Callable[..., PerceptualEncoder], num_frames: int = DEFAULT_NUM_FRAMES,
                  temporal: str = "mean", layers: int | Sequence[int] = 1, tokens: TokenSelection = "all",
                  final_norm: bool = True, trainable: bool = False, **image_options: Any) -> VideoFrameEncoder:
    """An image encoder on every frame: ``image`` is the encoder, or a loader called as
    ``image(trainable=trainable, **image_options)`` (the zoo's ``video:NAME`` passes one for ``NAME``)."""
    if not isinstance(image, PerceptualEncoder):
        image = image(trainable=trainable, **image_options)
    return VideoFrameEncoder(image, num_frames=num_frames, temporal=temporal, layers=layers, tokens=tokens,
                             final_norm=final_norm, trainable=trainable)


def timesformer_encoder(name_or_dir: str, **options: Any) -> TimeSformerEncoder:
    """Zoo prefix ``timesformer:ID``: :meth:`TimeSformerEncoder.from_pretrained`."""
    return TimeSformerEncoder.from_pretrained(name_or_dir, **options)


__all__ = ["TEMPORAL", "TIMESFORMER_TEMPORAL", "TOKEN_ORDERS", "TimeSformerEncoder", "VideoFrameEncoder",
           "aggregate_frames", "frame_major", "resize_time_embeddings", "timesformer_encoder", "video_encoder"]
