"""Shared LightningDataModule machinery: deterministic low-data subsets, media loading, collation,
and evaluation sharding where every sample is scored exactly once."""

from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from perceptlm.data.augment import MediaAugmentation, check_augment, depalm_augmentation
from perceptlm.data.collate import DEFAULT_TEMPLATES, Collator, Sample
from perceptlm.data.resumable import ResumableDataLoader
from perceptlm.data.samplers import EpochShuffleSampler, UnpaddedDistributedSampler
from perceptlm.data.feature_cache import cached_dataset, check_cacheable, stack_features

AUGMENT_STREAM = 1  # the 4th seed word of augmentation draws, apart from the frame draws of (seed, epoch, index)


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
    """Samples whose ``media`` path is read and preprocessed on access.

    ``sampled=True``: ``load(path, train, generator)`` draws what it reads (video frames); the
    generator is ``numpy.random.default_rng((seed, epoch, index))`` in training, so each epoch draws
    anew and a run is reproducible, and None at evaluation (deterministic reads).

    ``augmentation``: a callable giving the stage's :class:`~perceptlm.data.augment.MediaAugmentation`
    or None (asked on every access: the datamodule knows it once a model is connected). Its
    ``before`` runs on the loaded item and its ``after`` on the preprocessed media; a random one
    draws from ``numpy.random.default_rng((seed, epoch, index, 1))``, its own stream, so the same
    (seed, epoch, index) gives the same augmentation in any worker, re-run or resumed epoch."""

    def __init__(self, samples: list[Sample], load: Callable[..., Any], preprocess: Callable[[Any], Any],
                 train: bool = False, seed: int = 0, sampled: bool = False,
                 augmentation: Callable[[], MediaAugmentation | None] | None = None):
        self.samples, self.load, self.preprocess = samples, load, preprocess
        self.train, self.seed, self.sampled, self.epoch = train, seed, sampled, 0
        self.augmentation = augmentation

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _load(self, index: int, path: Any) -> Any:
        if not self.sampled:
            return self.load(path)
        generator = np.random.default_rng((self.seed, self.epoch, index)) if self.train else None
        return self.load(path, self.train, generator)

    def _media(self, index: int, path: Any) -> Any:
        item = self._load(index, path)
        augmentation = self.augmentation() if self.augmentation is not None else None
        if augmentation is None:
            return self.preprocess(item)
        generator = None
        if augmentation.random:
            generator = np.random.default_rng((self.seed, self.epoch, index, AUGMENT_STREAM))
        return augmentation.apply(item, self.preprocess, generator)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        """The sample with its media loaded. A file that fails to load (corrupt, truncated,
        vanished, a decompression bomb) gives ``media=None`` and the reason in ``extra["skipped"]``:
        the collator drops it and the model counts it, so one bad file never stops a run."""
        sample = self.samples[index]
        try:
            media = self._media(index, sample.media)
        except Exception as error:  # noqa: BLE001 - any decoder failure means "skip this sample"
            reason = f"{sample.media}: {type(error).__name__}: {error}"
            return Sample(sample.id, None, sample.prompt, sample.targets, {**sample.extra, "skipped": reason})
        return Sample(sample.id, media, sample.prompt, sample.targets, {**sample.extra, "source": str(sample.media)})


def check_eval_limits(val_limit: int | None, test_limit: int | None) -> None:
    """``val_limit`` / ``test_limit`` are None (the whole split) or >= 1."""
    for name, value in (("val_limit", val_limit), ("test_limit", test_limit)):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value} must be >= 1 (or None for the whole split)")


class PerceptionDataModule(LightningDataModule):
    """Base for every dataset. Subclasses implement :meth:`load_samples` (and may override
    :meth:`load_media`, :meth:`stop_token_ids`, :attr:`collator_class` / :meth:`collator_options`).

    The model supplies the tokenizer and the media preprocessing through :meth:`connect`, the one
    handshake between data and model (the training module calls it in its ``setup``, so the CLI,
    ``Trainer.fit(model, datamodule)`` and a later ``datamodule.setup("test")`` all find the data
    connected). ``feature_cache`` (a folder, or ``"auto"``) trains and evaluates from the frozen
    encoder's precomputed outputs (:mod:`perceptlm.data.feature_cache`).

    ``augment``: ``"none"`` (the encoder's ``preprocess`` alone) or ``"depalm"``, DePALM's training
    augmentation chosen by the encoder's modality (:mod:`perceptlm.data.augment`): images train
    with a random crop, flip and RandomAugment and evaluate after a squash resize to the encoder's
    input size; video clips likewise with torchvision's RandAugment (frame sampling unchanged); AST
    audio trains with SpecAugment and evaluates as with ``"none"``; other audio encoders (CLAP,
    Whisper) get nothing. The encoder's own ``preprocess`` (its normalisation) always runs after the
    image and video transforms. Random training augmentation and ``feature_cache`` exclude each other.

    Families set ``val_limit`` / ``test_limit`` (fixed evaluation subsets, :meth:`eval_limit`) and
    ``image_root`` (where media live when not under the data root, :meth:`images`) from their own
    arguments; :meth:`root` is ``data_root`` or ``$PERCEPTLM_DATA/<default_subdir>``."""

    name = "dataset"
    default_subdir = "dataset"
    splits = {"train": "train", "val": "val", "test": "test", "predict": "test"}
    # True when load_media(path, train, generator) samples what it reads (video frames); see MediaDataset.
    sampled_media = False
    collator_class: type[Collator] = Collator

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
        feature_cache: str | None = None,
        augment: str = "none",
    ) -> None:
        super().__init__()
        subset_indices(1, fraction, limit, seed)  # validate early
        self.augment = check_augment(augment)
        self.data_root = data_root
        self.task = task
        self.template = DEFAULT_TEMPLATES.get(task, "") if template is None else template
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.fraction, self.limit, self.seed = fraction, limit, seed
        self.max_length = max_length
        self.image_root: str | None = None
        self.val_limit: int | None = None
        self.test_limit: int | None = None
        self.tokenizer: Any = None
        self.preprocess: Callable[[Any], Any] | None = None
        self.stack_media: Callable[[list[Any]], Any] | None = None
        self.num_frames: int | None = None  # from the model's video encoder, through connect()
        self.datasets: dict[str, MediaDataset] = {}
        self.subset_ids: dict[str, list[str]] = {}
        self.feature_cache = feature_cache  # a folder, or "auto": $PERCEPTLM_CACHE/features
        self.encoder: Any = None
        self._cached: dict[str, Dataset] = {}
        self._augmentations: dict[str, MediaAugmentation | None] = {}  # per stage, set by connect()

    # -- to implement ------------------------------------------------------------------------------
    def load_samples(self, split: str) -> list[Sample]:
        raise NotImplementedError

    def load_media(self, path: Path) -> Any:
        return load_image(path)

    def eval_limit(self, stage: str) -> int | None:
        """How many samples the ``val`` / ``test`` stage reads (None: all)."""
        return self.val_limit if stage == "val" else self.test_limit

    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer in this data's text format besides the LLM's EOS (a chat
        template's end of turn); :meth:`connect` adds them to the model's ``stop_token_ids``."""
        return []

    def collator_options(self) -> dict[str, Any]:
        """Keyword arguments of :attr:`collator_class` beyond the common ones."""
        return {}

    def media_config(self, stage: str) -> dict[str, Any]:
        """How media files are decoded and transformed before the encoder (part of the feature
        cache's key; the cache reads every stage the evaluation way): the loader, the frame count
        and, with ``augment="depalm"``, the stage's deterministic transform (the evaluation squash
        resize). Override when decoding has more options."""
        owner = next(c for c in type(self).__mro__ if "load_media" in vars(c))
        return {"load_media": f"{owner.__module__}.{owner.__qualname__}", "num_frames": self.num_frames,
                **self.augment_config(stage)}

    def augment_config(self, stage: str) -> dict[str, Any]:
        """``{"augment": ...}`` describing the stage's transform around the encoder's ``preprocess``
        ({} when there is none, so ``augment="none"`` keys are unchanged)."""
        augmentation = self._augmentations.get(stage)
        return {} if augmentation is None else {"augment": {"name": self.augment, **augmentation.describe()}}

    def random_augmentation(self, stage: str) -> str | None:
        """What makes this stage's media random (the feature cache refuses it), or None: training
        with ``augment="depalm"``, and training reads of ``sampled_media`` unless
        ``train_frame_sampling`` is ``uniform``."""
        reasons = (self.augment_reason(stage), self.frame_sampling_reason(stage))
        return "; ".join(r for r in reasons if r) or None

    def frame_sampling_reason(self, stage: str) -> str | None:
        """Why frame sampling makes ``stage`` random, or None."""
        if stage != "train" or not self.sampled_media:
            return None
        sampling = getattr(self, "train_frame_sampling", "random")
        return None if sampling == "uniform" else f"{type(self).__name__} train_frame_sampling={sampling!r}"

    def augment_reason(self, stage: str) -> str | None:
        """Why ``augment`` makes ``stage`` random, or None."""
        if stage == "train" and self.augment != "none":
            return (f"{type(self).__name__} augment={self.augment!r} draws DePALM's training augmentation "
                    f"(set augment: none to cache)")
        return None

    # -- shared ------------------------------------------------------------------------------------
    def root(self) -> Path:
        """The dataset's folder: ``data_root``, else ``$PERCEPTLM_DATA/<default_subdir>``."""
        if self.data_root:
            return Path(self.data_root)
        env = os.environ.get("PERCEPTLM_DATA")
        if not env:
            raise ValueError(
                f"{self.name}: no data_root; pass --data.init_args.data_root DIR or set PERCEPTLM_DATA "
                f"(then {self.default_subdir}/ under it is used)"
            )
        return Path(env) / self.default_subdir

    def images(self) -> Path:
        """Where the media files live: ``image_root`` when set, else :meth:`root`."""
        return Path(self.image_root) if self.image_root else self.root()

    @property
    def connected(self) -> bool:
        return self.tokenizer is not None and self.preprocess is not None

    def connect(self, model: Any) -> None:
        """Receive what the data needs from ``model`` and give it what generation needs from the data.

        ``model``: any object with ``tokenizer``, ``encoder`` (its ``preprocess`` of one media item,
        ``stack_media`` to batch preprocessed items (``torch.stack`` when absent), and for video
        encoders ``num_frames``, the frames a clip is sampled to) and a list ``stop_token_ids``,
        which is extended in place with :meth:`stop_token_ids`. The encoder is also what
        ``feature_cache`` keys and builds the cache with; a cache that would be wrong (a trainable
        encoder, random augmentation) is refused here, before any feature is computed. Connecting
        again (another model) replaces all of it."""
        encoder = model.encoder
        if self.feature_cache is not None:
            check_cacheable(encoder, self, "train")  # the one check: evaluation stages read deterministically
        if encoder is not self.encoder:
            self._cached.clear()  # features of another encoder
        self._augmentations = {}
        if self.augment == "depalm":
            self._augmentations = {stage: depalm_augmentation(encoder, train=stage == "train")
                                   for stage in self.splits}
        self.tokenizer, self.encoder = model.tokenizer, encoder
        self.preprocess, self.stack_media = encoder.preprocess, getattr(encoder, "stack_media", None)
        self.num_frames = getattr(encoder, "num_frames", None)
        stops = model.stop_token_ids
        stops[:] = sorted({*stops, *self.stop_token_ids()})

    def _require_connected(self) -> None:
        if not self.connected:
            raise RuntimeError(
                f"{type(self).__name__} is not connected to a model: call datamodule.connect(model) (a model "
                f"with tokenizer, encoder and stop_token_ids) or let Trainer.fit / the CLI connect it"
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
        return MediaDataset(samples, self.load_media, self._preprocess, train=stage == "train", seed=self.seed,
                            sampled=self.sampled_media, augmentation=partial(self.augmentation, stage))

    def _preprocess(self, item: Any) -> Any:
        self._require_connected()
        return self.preprocess(item)  # type: ignore[misc]

    def augmentation(self, stage: str) -> MediaAugmentation | None:
        """The stage's transform around the encoder's ``preprocess`` (None with ``augment="none"``)."""
        self._require_connected()
        return self._augmentations.get(stage)

    def deterministic_preprocess(self, stage: str) -> Callable[[Any], Any]:
        """Item -> media as ``stage`` reads it without random draws (what the feature cache encodes):
        the encoder's ``preprocess`` inside the stage's deterministic transform, if any."""
        augmentation = self.augmentation(stage)
        if augmentation is None:
            return self.encoder.preprocess
        if augmentation.random:
            raise ValueError(f"{type(self).__name__}: the {stage} stage draws a random augmentation "
                             f"(augment={self.augment!r}); it has no deterministic preprocessing")
        return partial(augmentation.apply, preprocess=self._preprocess, generator=None)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"]}
        for name in wanted.get(stage or "fit", ["train", "val", "test"]):
            if name not in self.datasets:
                self.datasets[name] = self._build(name)

    def _collator(self, train: bool) -> Collator:
        self._require_connected()
        stack_media = stack_features if self.feature_cache is not None else self.stack_media
        return self.collator_class(self.tokenizer, self.task, train=train, stack_media=stack_media,
                                   max_length=self.max_length, seed=self.seed, **self.collator_options())

    def _loader_dataset(self, stage: str) -> Dataset:
        """The stage's dataset; with ``feature_cache``, its samples read the cached features (built
        here on first use with the encoder that :meth:`connect` received)."""
        dataset = self.datasets[stage]
        if self.feature_cache is None:
            return dataset
        cached = self._cached.get(stage)
        if cached is None or cached.samples is not dataset.samples:
            cached = self._cached[stage] = cached_dataset(self, stage, dataset)
        return cached

    def train_dataloader(self) -> DataLoader:
        dataset = self._loader_dataset("train")
        loader = ResumableDataLoader(dataset, batch_size=self.batch_size, sampler=EpochShuffleSampler(len(dataset), self.seed, dataset),
                                     num_workers=self.num_workers, collate_fn=self._collator(train=True), drop_last=False)
        if getattr(self, "_train_position", None):
            loader.load_state_dict(self._train_position)
        self._train_loader, self._train_position = loader, None
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The training loader's place in its epoch. Lightning also restores it through the fit loop,
        except when the loader was built before the checkpoint was read (``max_epochs`` runs build it
        for ``estimated_stepping_batches``; ``FitLoop.setup_data`` then returns early)."""
        loader = getattr(self, "_train_loader", None)
        return {"train_position": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._train_position = state.get("train_position")
        if self._train_position and getattr(self, "_train_loader", None) is not None:
            self._train_loader.load_state_dict(self._train_position)

    def _eval_loader(self, stage: str) -> DataLoader:
        dataset = self._loader_dataset(stage)
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
