"""DePALM's training augmentation (Vallaeys et al. 2024), the ``augment="depalm"`` option of every
:class:`~perceptlm.data.base.PerceptionDataModule`. ``augment="none"`` (the default) changes nothing.

What each modality gets (the encoder's modality decides; ``S`` is the encoder's input size, 224 for
every DePALM backbone, 224 when the encoder declares none):

- **Images.** Training: RGB -> ``RandomResizedCrop(S, scale=(0.5, 1.0))`` (bicubic) -> horizontal
  flip (p = 0.5) -> ALBEF's ``RandomAugment(2, 7)`` over Identity, AutoContrast, Equalize,
  Brightness, Sharpness, ShearX, ShearY, TranslateX, TranslateY, Rotate (:class:`RandomAugment`).
  Evaluation (val / test / predict): a bicubic resize to ``S x S`` (no crop, aspect ratio not
  kept). Then, in both, the encoder's own ``preprocess`` (its resize / crop, which leave an
  ``S x S`` image as it is for plain-resize and resize + centre-crop encoders, then its mean/std).
- **Video.** Training: the same crop and flip on the whole clip, then torchvision's
  ``RandAugment()`` (2 ops, magnitude 9 of 31), one draw per clip shared by its frames (DePALM's
  MSR-VTT transform). Evaluation: a bicubic resize of every frame to ``S x S``. Then the encoder's
  ``preprocess``. Frame sampling (``train_frame_sampling``) is unchanged.
- **Audio.** SpecAugment on AST's Kaldi filterbank in training: one frequency mask of width drawn
  in ``[0, 24)`` mel bins, then one time mask of width in ``[0, 96)`` frames (torchaudio's
  ``FrequencyMasking(24)`` / ``TimeMasking(96)``). DePALM masks the filterbank with 0 before AST's
  normalisation; the masks are applied here to the normalised features with the normalised value of
  0, the same numbers. Other audio encoders (CLAP, which DePALM feeds raw waveforms, and Whisper)
  get no augmentation: :func:`depalm_augmentation` returns None and logs it. Evaluation: nothing.

Random draws come from the ``numpy.random.Generator`` that
:class:`~perceptlm.data.base.MediaDataset` makes for (seed, epoch, index): the torchvision and
torchaudio-style steps run under :func:`seeded_torch`, which seeds a forked torch RNG from it, so a
re-run or resumed epoch draws the same augmentation and DataLoader workers do not repeat each other.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms
from torchvision.transforms import functional

from perceptlm.encoders.ast_audio import ASTAudioEncoder
from perceptlm.encoders.efficientnet import to_rgb

log = logging.getLogger(__name__)

BICUBIC = transforms.InterpolationMode.BICUBIC

AUGMENTS = ("none", "depalm")
DEPALM_SIZE = 224  # DePALM's resize_image_size
CROP_SCALE = (0.5, 1.0)
FREQ_MASK, TIME_MASK = 24, 96  # DePALM audiocaps.py: freqm_p, timem_p


def check_augment(augment: str) -> str:
    if augment not in AUGMENTS:
        raise ValueError(f"augment={augment!r} is unknown; valid: {AUGMENTS}")
    return augment


@contextmanager
def seeded_torch(generator: np.random.Generator) -> Iterator[None]:
    """Torch's CPU RNG seeded from ``generator`` inside the block and restored after it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(generator.integers(2**63)))
        yield


# -- ALBEF's RandomAugment (DePALM data/augmentation/randomized.py), OpenCV-free -------------------
def warp_affine(image: np.ndarray, matrix: Sequence[Sequence[float]], fill: Sequence[int]) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, (W, H), flags=INTER_LINEAR, borderValue=fill)`` for uint8
    ``[H, W, C]`` images: the forward matrix is inverted in double precision, source coordinates
    are rounded to 1/32 pixel and the bilinear weights are fixed-point (2^15), as OpenCV does;
    neighbours outside the image read ``fill``."""
    m = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    inv = 1.0 / det if det != 0 else 0.0
    a11, a22 = m[1, 1] * inv, m[0, 0] * inv
    a12, a21 = -m[0, 1] * inv, -m[1, 0] * inv
    b1, b2 = -a11 * m[0, 2] - a12 * m[1, 2], -a21 * m[0, 2] - a22 * m[1, 2]
    height, width = image.shape[:2]
    xs, ys = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
    scale, bits = 1 << 10, 5  # AB_BITS = 10, INTER_BITS = 5 (INTER_TAB_SIZE = 32)
    round_delta = scale // 32 // 2
    x_step, y_step = np.rint(a11 * xs * scale).astype(np.int64), np.rint(a21 * xs * scale).astype(np.int64)
    x_row = np.rint((a12 * ys + b1) * scale).astype(np.int64) + round_delta
    y_row = np.rint((a22 * ys + b2) * scale).astype(np.int64) + round_delta
    x = (x_row[:, None] + x_step[None, :]) >> (10 - bits)
    y = (y_row[:, None] + y_step[None, :]) >> (10 - bits)
    sx, sy, fx, fy = x >> bits, y >> bits, x & 31, y & 31
    fill_value = np.asarray(fill, dtype=np.int64)[: image.shape[2]]
    total = np.zeros(image.shape, dtype=np.int64)
    for dy, wy in ((0, 32 - fy), (1, fy)):
        for dx, wx in ((0, 32 - fx), (1, fx)):
            px, py = sx + dx, sy + dy
            inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)
            pixels = np.where(inside[..., None], image[py.clip(0, height - 1), px.clip(0, width - 1)], fill_value)
            total += pixels.astype(np.int64) * (wy * wx * 32)[..., None]
    return ((total + (1 << 14)) >> 15).clip(0, 255).astype(np.uint8)


def _channels(image: np.ndarray, tune: Any) -> np.ndarray:
    return np.stack([tune(image[..., c]) for c in range(image.shape[2])], axis=-1)


def autocontrast(image: np.ndarray) -> np.ndarray:
    """Per channel, stretch [min, max] to [0, 255] (ALBEF ``autocontrast_func``, cutoff 0)."""
    def tune(channel: np.ndarray) -> np.ndarray:
        high, low = int(channel.max()), int(channel.min())
        if high <= low:
            return channel
        scale = 255.0 / (high - low)
        table = (np.arange(256) * scale - float(low) * scale).clip(0, 255).astype(np.uint8)
        return table[channel]
    return _channels(image, tune)


def equalize(image: np.ndarray) -> np.ndarray:
    """Per-channel histogram equalisation with PIL's lookup table (ALBEF ``equalize_func``)."""
    def tune(channel: np.ndarray) -> np.ndarray:
        hist = np.bincount(channel.ravel(), minlength=256).astype(np.float32)
        nonzero = hist[hist != 0]
        step = np.sum(nonzero[:-1]) // 255
        if step == 0:
            return channel
        shifted = np.empty_like(hist)
        shifted[0], shifted[1:] = step // 2, hist[:-1]
        return (np.cumsum(shifted) // step).clip(0, 255).astype(np.uint8)[channel]
    return _channels(image, tune)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return (np.arange(256, dtype=np.float32) * factor).clip(0, 255).astype(np.uint8)[image]


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the 3x3 smoothing (1 1 1 / 1 5 1 / 1 1 1) / 13 inside a 1-pixel border, which is
    kept (ALBEF ``sharpness_func``; the smoothed values are rounded to uint8 like ``cv2.filter2D``)."""
    if factor == 1.0:
        return image
    kernel = np.ones((3, 3), dtype=np.float32)
    kernel[1, 1] = 5
    kernel /= 13
    height, width = image.shape[:2]
    pixels = image.astype(np.float32)
    smooth = np.zeros((height - 2, width - 2, image.shape[2]), dtype=np.float32)
    for dy in range(3):
        for dx in range(3):
            smooth += kernel[dy, dx] * pixels[dy : dy + height - 2, dx : dx + width - 2]
    smooth = np.rint(smooth).clip(0, 255).astype(np.uint8).astype(np.float32)
    if factor == 0.0:
        raise ValueError("sharpness factor 0 needs OpenCV's border handling; DePALM's magnitude never gives it")
    out = pixels.copy()
    out[1:-1, 1:-1] = smooth + factor * (out[1:-1, 1:-1] - smooth)
    return out.clip(0, 255).astype(np.uint8)


def _affine(image: np.ndarray, matrix: list[list[float]], fill: Sequence[int]) -> np.ndarray:
    return warp_affine(image, np.float32(matrix), fill)  # ALBEF builds float32 matrices


def shear_x(image: np.ndarray, factor: float, fill: Sequence[int]) -> np.ndarray:
    return _affine(image, [[1, factor, 0], [0, 1, 0]], fill)


def shear_y(image: np.ndarray, factor: float, fill: Sequence[int]) -> np.ndarray:
    return _affine(image, [[1, 0, 0], [factor, 1, 0]], fill)


def translate_x(image: np.ndarray, offset: float, fill: Sequence[int]) -> np.ndarray:
    return _affine(image, [[1, 0, -offset], [0, 1, 0]], fill)


def translate_y(image: np.ndarray, offset: float, fill: Sequence[int]) -> np.ndarray:
    return _affine(image, [[1, 0, 0], [0, 1, -offset]], fill)


def rotate(image: np.ndarray, degrees: float, fill: Sequence[int]) -> np.ndarray:
    """Counter-clockwise about (W/2, H/2), as ``cv2.getRotationMatrix2D`` + ``warpAffine``."""
    height, width = image.shape[:2]
    cx, cy = width / 2, height / 2
    angle = degrees * math.pi / 180
    alpha, beta = math.cos(angle), math.sin(angle)
    matrix = [[alpha, beta, (1 - alpha) * cx - beta * cy], [-beta, alpha, beta * cx + (1 - alpha) * cy]]
    return warp_affine(image, matrix, fill)


class RandomAugment:
    """ALBEF's RandAugment as DePALM uses it (``RandomAugment(2, 7, augs=[...])``): ``num_ops`` ops
    drawn uniformly with replacement from ``ops``, each applied with probability 0.5 at level
    ``magnitude`` of 10. Levels: Brightness / Sharpness factor ``m/10 * 1.8 + 0.1``; shears
    ``m/10 * 0.3``, translations ``m/10 * 10`` pixels, rotation ``m/10 * 30`` degrees, each with a
    random sign; geometric ops fill with grey (128, 128, 128)."""

    OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
           "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
    MAX_LEVEL, TRANSLATE_CONST, FILL = 10, 10, (128, 128, 128)

    def __init__(self, num_ops: int = 2, magnitude: int = 7, ops: Sequence[str] = OPS) -> None:
        unknown = sorted(set(ops) - set(self.OPS))
        if unknown:
            raise ValueError(f"RandomAugment: unknown ops {unknown}; valid: {self.OPS}")
        self.num_ops, self.magnitude, self.ops = num_ops, magnitude, tuple(ops)

    def apply(self, image: np.ndarray, op: str, generator: np.random.Generator) -> np.ndarray:
        """One op at this magnitude (drawing its sign from ``generator`` where it has one)."""
        level = self.magnitude / self.MAX_LEVEL
        if op == "Identity":
            return image
        if op == "AutoContrast":
            return autocontrast(image)
        if op == "Equalize":
            return equalize(image)
        if op in ("Brightness", "Sharpness"):
            factor = level * 1.8 + 0.1
            return brightness(image, factor) if op == "Brightness" else sharpness(image, factor)
        if op == "Rotate":
            degrees = level * 30
            return rotate(image, -degrees if generator.random() < 0.5 else degrees, self.FILL)
        amount = level * (0.3 if op.startswith("Shear") else float(self.TRANSLATE_CONST))
        if generator.random() > 0.5:
            amount = -amount
        function = {"ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x, "TranslateY": translate_y}[op]
        return function(image, amount, self.FILL)

    def __call__(self, image: Image.Image, generator: np.random.Generator) -> Image.Image:
        pixels = np.array(image)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] not in (1, 3):
            raise ValueError(f"RandomAugment takes uint8 [H, W, 1 or 3] images, got {pixels.dtype} {pixels.shape}")
        chosen = [self.ops[i] for i in generator.choice(len(self.ops), self.num_ops)]
        for op in chosen:
            if generator.random() > 0.5:
                continue
            pixels = self.apply(pixels, op, generator)
        return Image.fromarray(pixels)


# -- per-modality transforms -----------------------------------------------------------------------
class MediaAugmentation:
    """A transform around the encoder's ``preprocess``: :meth:`before` on the decoded item,
    :meth:`after` on the preprocessed media; ``random`` when it draws from the generator."""

    random = False

    def before(self, item: Any, generator: np.random.Generator | None) -> Any:
        return item

    def after(self, media: Any, generator: np.random.Generator | None) -> Any:
        return media

    def apply(self, item: Any, preprocess: Callable[[Any], Any], generator: np.random.Generator | None) -> Any:
        """``item`` through :meth:`before`, the encoder's ``preprocess``, then :meth:`after`."""
        return self.after(preprocess(self.before(item, generator)), generator)

    def describe(self) -> dict[str, Any]:
        """What it does, for the feature cache's key (deterministic transforms only)."""
        return {"class": type(self).__name__}


class ImageAugmentation(MediaAugmentation):
    """DePALM's image transform (module docstring): random crop, flip and RandomAugment in
    training; a squash resize to ``size`` (h, w) otherwise."""

    def __init__(self, size: tuple[int, int], train: bool) -> None:
        self.size, self.train, self.random = (int(size[0]), int(size[1])), train, train
        self.crop_flip = transforms.Compose([
            transforms.RandomResizedCrop(self.size, scale=CROP_SCALE, interpolation=BICUBIC, antialias=True),
            transforms.RandomHorizontalFlip(),
        ])
        self.randaugment = RandomAugment(2, 7)

    def before(self, item: Any, generator: np.random.Generator | None) -> Image.Image:
        image = to_rgb(item)
        if not self.train:
            return image.resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC)
        if generator is None:
            raise ValueError("DePALM's training augmentation draws from a seeded numpy Generator; got None")
        with seeded_torch(generator):
            image = self.crop_flip(image)
        return self.randaugment(image, generator)

    def describe(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "train": self.train, "resize": list(self.size), "resample": "bicubic"}


class VideoAugmentation(MediaAugmentation):
    """DePALM's MSR-VTT transform (module docstring) on ``[T, H, W, 3]`` uint8 frames, one draw per
    clip; the result is ``[T, h, w, 3]`` uint8 frames for the encoder's ``preprocess``."""

    def __init__(self, size: tuple[int, int], train: bool) -> None:
        self.size, self.train, self.random = (int(size[0]), int(size[1])), train, train
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(self.size, scale=CROP_SCALE, interpolation=BICUBIC, antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.RandAugment(),
        ])

    def before(self, item: Any, generator: np.random.Generator | None) -> np.ndarray:
        if isinstance(item, (list, tuple)):
            item = np.stack([np.asarray(to_rgb(frame)) for frame in item])
        frames = torch.as_tensor(np.asarray(item)).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
        if not self.train:
            frames = functional.resize(frames, list(self.size), interpolation=BICUBIC, antialias=True)
        else:
            if generator is None:
                raise ValueError("DePALM's training augmentation draws from a seeded numpy Generator; got None")
            with seeded_torch(generator):
                frames = self.transform(frames)
        return frames.permute(0, 2, 3, 1).contiguous().numpy()

    def describe(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "train": self.train, "resize": list(self.size), "resample": "bicubic"}


def mask_along_axis(spectrogram: Tensor, mask_param: int, value: float, axis: int) -> Tensor:
    """One mask along ``axis`` of a ``[1, freq, time]`` spectrogram from the torch RNG, as
    ``torchaudio.functional.mask_along_axis`` (p = 1): width ``floor(u * mask_param)``, start
    ``floor(v * (size - u * mask_param))``."""
    size = spectrogram.size(axis)
    width = torch.rand(1) * mask_param
    start = torch.rand(1) * (size - width)
    first, last = int(start.long()), int(start.long() + width.long())
    index = torch.arange(size)
    mask = (index >= first) & (index < last)
    shape = [1] * spectrogram.dim()
    shape[axis] = size
    return spectrogram.masked_fill(mask.view(shape), value)


class SpecAugment(MediaAugmentation):
    """DePALM's AudioCaps SpecAugment on AST's ``input_features`` ``[frames, mels]`` (module
    docstring): one frequency mask (< ``freq_mask`` bins), then one time mask (< ``time_mask``
    frames), filled with ``fill``, the normalised value of a zero filterbank entry."""

    random = True

    def __init__(self, fill: float, freq_mask: int = FREQ_MASK, time_mask: int = TIME_MASK) -> None:
        self.fill, self.freq_mask, self.time_mask = float(fill), freq_mask, time_mask

    def after(self, media: Any, generator: np.random.Generator | None) -> Any:
        if generator is None:
            raise ValueError("SpecAugment draws from a seeded numpy Generator; got None")
        features = media["input_features"]
        spectrogram = features.transpose(0, 1).unsqueeze(0)  # [1, mels, frames], as DePALM
        with seeded_torch(generator):
            spectrogram = mask_along_axis(spectrogram, self.freq_mask, self.fill, axis=1)
            spectrogram = mask_along_axis(spectrogram, self.time_mask, self.fill, axis=2)
        return {**media, "input_features": spectrogram.squeeze(0).transpose(0, 1).contiguous()}


def input_size(encoder: Any) -> tuple[int, int]:
    """The (h, w) an image or video encoder takes (``image_size``, of the per-frame image encoder
    for video), or DePALM's 224 x 224 when it declares none."""
    size = getattr(encoder, "image_size", None)
    if size is None and getattr(encoder, "image_encoder", None) is not None:
        size = getattr(encoder.image_encoder, "image_size", None)
    if size is None:
        return (DEPALM_SIZE, DEPALM_SIZE)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def ast_fill_value(encoder: ASTAudioEncoder) -> float:
    """The value a zero filterbank entry has after AST's normalisation ``(x - mean) / (2 std)``."""
    extractor = encoder.feature_extractor
    if not getattr(extractor, "do_normalize", False):
        return 0.0
    return float(extractor.normalize(np.zeros(1, dtype=np.float32))[0])  # in float32, as the extractor


def depalm_augmentation(encoder: Any, train: bool) -> MediaAugmentation | None:
    """The ``augment="depalm"`` transform of one stage for ``encoder`` (module docstring), or None
    where DePALM has none."""
    modality = getattr(encoder, "modality", "image")
    if modality == "image":
        return ImageAugmentation(input_size(encoder), train)
    if modality == "video":
        return VideoAugmentation(input_size(encoder), train)
    if modality == "audio":
        if not isinstance(encoder, ASTAudioEncoder):
            if train:
                log.warning("augment='depalm': DePALM's SpecAugment is defined on AST's filterbank only; %s "
                            "gets no augmentation", getattr(encoder, "name", type(encoder).__name__))
            return None
        return SpecAugment(ast_fill_value(encoder)) if train else None
    raise ValueError(f"augment='depalm': no DePALM augmentation for modality {modality!r}; valid modalities: "
                     f"'image', 'video', 'audio'")
