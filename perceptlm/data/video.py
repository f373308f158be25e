"""Video media: segment-based frame sampling, decoding only the sampled frames, and the base
datamodule of video datasets.

Sampling is TSN's segment-based sampling (Wang et al., ECCV 2016), DePALM's MSR-VTT protocol
(Vallaeys et al. 2024: 16 frames, a random frame per segment in training, the middle one at test):
the clip is split into ``num_frames`` equal segments and one frame is taken from each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from perceptlm.data.base import PerceptionDataModule


def sample_frame_indices(num_total: int, num_frames: int, train: bool, generator: Any = None) -> list[int]:
    """``num_frames`` frame indices (sorted) out of ``num_total``.

    Segment ``i`` holds frames ``[floor(i*N/F), floor((i+1)*N/F))``. Evaluation takes each
    segment's centre ``start + (end - start) // 2``; training one uniformly random frame per
    segment drawn from ``generator`` (a ``numpy.random.Generator`` or ``torch.Generator``; required,
    so runs are reproducible). A clip with fewer frames than ``num_frames`` repeats its frames in
    order (frame ``floor((i + 0.5) * N / F)`` for slot ``i``, the same at training and evaluation).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames} must be >= 1")
    if num_total < 1:
        raise ValueError(f"the video has {num_total} frames; at least 1 is needed")
    if num_total < num_frames:
        return [int((2 * i + 1) * num_total // (2 * num_frames)) for i in range(num_frames)]
    starts = [i * num_total // num_frames for i in range(num_frames + 1)]
    if not train:
        return [start + (end - start) // 2 for start, end in zip(starts, starts[1:])]
    if isinstance(generator, np.random.Generator):
        return [int(generator.integers(start, end)) for start, end in zip(starts, starts[1:])]
    if isinstance(generator, torch.Generator):
        return [int(torch.randint(start, end, (1,), generator=generator)) for start, end in zip(starts, starts[1:])]
    raise TypeError(
        f"training frame sampling needs a seeded numpy.random.Generator or torch.Generator, got "
        f"{type(generator).__name__}"
    )


def load_video(path: str | Path, num_frames: int, train: bool = False, generator: Any = None) -> np.ndarray:
    """Decode only the sampled frames of ``path`` with decord: uint8 RGB ``[num_frames, H, W, 3]``.

    A missing, unreadable or empty file raises an error that names it (the dataset turns it into a
    skipped sample)."""
    from decord import VideoReader, cpu

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: video file not found")
    try:
        reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    except Exception as error:  # noqa: BLE001 - decord raises RuntimeError/DECORDError for bad files
        raise RuntimeError(f"{path}: cannot open the video ({type(error).__name__}: {error})") from None
    total = len(reader)
    if total == 0:
        raise ValueError(f"{path}: the video has 0 frames")
    indices = sample_frame_indices(total, num_frames, train, generator)
    try:
        frames = reader.get_batch(indices).asnumpy()
    except Exception as error:  # noqa: BLE001 - truncated streams fail while decoding
        raise RuntimeError(f"{path}: cannot decode frames {indices} ({type(error).__name__}: {error})") from None
    if frames.ndim != 4 or frames.shape[0] != num_frames or frames.shape[-1] != 3:
        raise RuntimeError(f"{path}: decoded frames of shape {frames.shape}, expected [{num_frames}, H, W, 3]")
    return frames


def frame_strip(path: str | Path, num_frames: int = 4) -> np.ndarray:
    """The segment-centre frames of a clip side by side: uint8 ``[H, num_frames * W, 3]`` (a
    still preview of a video, e.g. in a W&B table)."""
    return np.concatenate(list(load_video(path, num_frames)), axis=1)


class VideoDataModule(PerceptionDataModule):
    """Base of video datasets: media are clip paths, read by :func:`load_video` with the frame
    count of the model's video encoder (``encoder.num_frames``, received through :meth:`connect`).
    Frames are random per segment in the train split (seeded by (seed, epoch, index), see
    :class:`~perceptlm.data.base.MediaDataset`) and the segment centres elsewhere; ``train_frame_sampling="uniform"`` reads the centres in training too
    (deterministic media, e.g. for the feature cache)."""

    sampled_media = True
    FRAME_SAMPLING = ("random", "uniform")

    def __init__(self, train_frame_sampling: str = "random", **kwargs: Any) -> None:
        if train_frame_sampling not in self.FRAME_SAMPLING:
            raise ValueError(
                f"train_frame_sampling={train_frame_sampling!r} is unknown; valid: {self.FRAME_SAMPLING}"
            )
        super().__init__(**kwargs)
        self.train_frame_sampling = train_frame_sampling

    def connect(self, model: Any) -> None:
        num_frames = getattr(model.encoder, "num_frames", None)
        if num_frames is None or num_frames < 1:
            raise ValueError(
                f"{self.name} is a video dataset: the model's encoder must be a video encoder with a frame "
                f"count (num_frames={num_frames!r}); use e.g. --model.init_args.encoder video:efficientnet-lite0 "
                f"or test-tiny-timesformer"
            )
        super().connect(model)

    def load_media(self, path: Path, train: bool = False, generator: Any = None) -> np.ndarray:
        if self.num_frames is None:
            raise RuntimeError(f"{self.name}: not connected to a video encoder (no frame count)")
        return load_video(path, self.num_frames, train and self.train_frame_sampling == "random", generator)
