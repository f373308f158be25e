"""Shared LightningDataModule machinery: deterministic low-data subsets, media loading, collation,
and evaluation sharding where every sample is scored exactly once."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from perceptlm.data.collate import DEFAULT_TEMPLATES, Collator, Sample


def subset_indices(size: int, fraction: float | None, limit: int | None, seed: int) -> list[int]:
    """The same sorted subset for a given seed on every rank and every run."""
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} is outside (0, 1]")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be >= 1 (or None for no limit)")
    count = size if fraction is None else max(1, math.ceil(fraction * size))
    count = count if limit is None else min(count, limit)
    if count >= size:
        return list(range(size))
    order = np.random.default_rng(seed).permutation(size)
    return sorted(int(i) for i in order[:count])


def load_image(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.copy()


class MediaDataset(Dataset):
    """Samples whose ``media`` path is read and preprocessed on access."""

    def __init__(self, samples: list[Sample], load: Callable[[Path], Any], preprocess: Callable[[Any], Any]):
        self.samples, self.load, self.preprocess = samples, load, preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        """The sample with its media loaded. A file that fails to load (corrupt, truncated,
        vanished, a decompression bomb) gives ``media=None`` and the reason in ``extra["skipped"]``:
        the collator drops it and the model counts it, so one bad file never stops a run."""
        sample = self.samples[index]
        try:
            media = self.preprocess(self.load(sample.media))
        except Exception as error:  # noqa: BLE001 - any decoder failure means "skip this sample"
            reason = f"{sample.media}: {type(error).__name__}: {error}"
            return Sample(sample.id, None, sample.prompt, sample.targets, {**sample.extra, "skipped": reason})
        return Sample(sample.id, media, sample.prompt, sample.targets, {**sample.extra, "source": str(sample.media)})


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A shuffle that depends only on (seed, epoch), so a run resumed at an epoch boundary sees the
    same order as an uninterrupted one (Lightning calls :meth:`set_epoch`)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank r takes samples r, r+W, r+2W, ...: no padding duplicates and no drops."""

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class PerceptionDataModule(LightningDataModule):
    """Base for every dataset. Subclasses implement :meth:`load_samples` (and may override
    :meth:`load_media`, :meth:`eval_limit`). The model supplies the tokenizer and the media
    preprocessing through :meth:`connect` (the CLI links them; ``InterfaceModule.setup`` connects
    a datamodule passed to ``Trainer.fit`` directly)."""

    name = "dataset"
    splits = {"train": "train", "val": "val", "test": "test", "predict": "test"}

    def __init__(
        self,
        data_root: str | None = None,
        task: str = "vqa",
        template: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        fraction: float | None = None,
        limit: int | None = None,
        seed: int = 0,
        max_length: int = 256,
    ) -> None:
        super().__init__()
        subset_indices(1, fraction, limit, seed)  # validate early
        self.data_root = data_root
        self.task = task
        self.template = DEFAULT_TEMPLATES.get(task, "") if template is None else template
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.fraction, self.limit, self.seed = fraction, limit, seed
        self.max_length = max_length
        self.tokenizer: Any = None
        self.preprocess: Callable[[Any], Any] | None = None
        self.stack_media: Callable[[list[Any]], Any] | None = None
        self.datasets: dict[str, MediaDataset] = {}
        self.subset_ids: dict[str, list[str]] = {}

    # -- to implement ------------------------------------------------------------------------------
    def load_samples(self, split: str) -> list[Sample]:
        raise NotImplementedError

    def load_media(self, path: Path) -> Any:
        return load_image(path)

    def eval_limit(self, stage: str) -> int | None:
        return None

    # -- shared ------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.tokenizer is not None and self.preprocess is not None

    def connect(
        self,
        tokenizer: Any,
        preprocess: Callable[[Any], Any],
        stack_media: Callable[[list[Any]], Any] | None = None,
        max_length: int | None = None,
    ) -> None:
        """Receive what the data needs from the model: its tokenizer, how one media item is
        preprocessed and how preprocessed items are batched (``encoder.stack_media``)."""
        self.tokenizer, self.preprocess, self.stack_media = tokenizer, preprocess, stack_media
        if max_length is not None:
            self.max_length = max_length

    def _require_connected(self) -> None:
        if not self.connected:
            raise RuntimeError(
                f"{type(self).__name__} is not connected to a model: call "
                f"datamodule.connect(model.tokenizer, model.encoder.preprocess, model.encoder.stack_media) "
                f"or let the CLI do it"
            )

    def _build(self, stage: str) -> MediaDataset:
        samples = self.load_samples(self.splits[stage])
        if stage == "train":
            keep = subset_indices(len(samples), self.fraction, self.limit, self.seed)
        else:
            keep = subset_indices(len(samples), None, self.eval_limit(stage), seed=0)
        samples = [samples[i] for i in keep]
        missing = [s.media for s in samples if isinstance(s.media, Path) and not s.media.exists()]
        if missing:
            examples = ", ".join(str(m) for m in missing[:3])
            raise FileNotFoundError(f"{self.name} {stage}: {len(missing)} media files are missing, e.g. {examples}")
        self.subset_ids[stage] = [s.id for s in samples]
        return MediaDataset(samples, self.load_media, self._preprocess)

    def _preprocess(self, item: Any) -> Any:
        self._require_connected()
        return self.preprocess(item)  # type: ignore[misc]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"]}
        for name in wanted.get(stage or "fit", ["train", "val", "test"]):
            if name not in self.datasets:
                self.datasets[name] = self._build(name)

    def _collator(self, train: bool) -> Collator:
        self._require_connected()
        return Collator(self.tokenizer, self.task, train=train, stack_media=self.stack_media,
                        max_length=self.max_length, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        return DataLoader(dataset, batch_size=self.batch_size, sampler=EpochShuffleSampler(len(dataset), self.seed),
                          num_workers=self.num_workers, collate_fn=self._collator(train=True), drop_last=False)

    def _eval_loader(self, stage: str) -> DataLoader:
        dataset = self.datasets[stage]
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = UnpaddedDistributedSampler(dataset)
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=self._collator(train=False))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")
