"""On-disk, memory-mapped cache of a frozen encoder's selected outputs (DePALM §3.1 features).

A frozen encoder gives the same features for a media file every epoch, so they can be computed once
(DePALM trains with frozen backbones; the encoder pass is then pure overhead). One directory per
key under the cache root; the key is the SHA-256 of a canonical JSON of the encoder's
:meth:`~perceptlm.encoders.base.PerceptualEncoder.cache_key` (name, layer indices, token selection,
final norm, preprocessing, parameter dtype), a digest of its weights, the datamodule's
:meth:`media_config` (how files are decoded) and :data:`FORMAT_VERSION`. Any change of these
gives another directory::

    <root>/<encoder>-<sha256[:20]>/
        key.json                      the canonical key, for humans and to detect collisions
        .lock                         build lock (``flock``): one builder at a time
        shards/<time>-<pid>-<rand>/   immutable once renamed into place
            tokens.npy                [rows, L, N, D] float32 (float16/float64 kept; bfloat16 as float32)
            mask.npy                  [rows, N] bool
            index.json                {"entries": [{"path", "size", "mtime_ns", "row" | "error"}], ...}

Media files are keyed by absolute path + size + modification time (``mtime_ns``): a touched or
rewritten file is recomputed into a new shard, whose entry wins over the old one. Each unique file
is encoded once however many samples share it. Shards are written in a temporary folder and renamed
into place, ``chunk_size`` files at a time, so an interrupted build keeps what it finished and
resumes from there; concurrent builders (DDP ranks, parallel jobs) serialise on the lock, and the
ones that waited find the rows already written. The lock is ``fcntl.flock`` (POSIX); on network
filesystems without ``flock`` support build the cache once before launching several ranks.
Files are checked against their stamps when a dataset is set up, not on every read.

A cache is valid only when the media are deterministic: an encoder with ``random_augmentation`` or a
data stage with random frame sampling or ``augment="depalm"`` training is refused
(:func:`check_cacheable`, run once, when the model connects to the datamodule); a deterministic
transform before the encoder (``augment="depalm"``'s evaluation resize) is applied when the cache is
built and is part of the key (the datamodule's :meth:`media_config`). Features are computed at
the encoder's parameter precision, outside any autocast, and read back in the dtype the encoder gave;
they equal live features to float rounding (CPU kernels differ slightly with the batch size).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import Dataset

from perceptlm.data.collate import Sample
from perceptlm.encoders.base import PerceptualEncoder, PerceptualFeatures
from perceptlm.paths import cache_dir

FORMAT_VERSION = 1
_STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
            torch.bfloat16: np.float32}  # bfloat16 -> float32 is exact; read back as bfloat16


def resolve_root(option: str | os.PathLike) -> Path:
    """``"auto"`` -> ``$PERCEPTLM_CACHE/features``; anything else is the cache root itself."""
    if str(option) == "auto":
        return cache_dir() / "features"
    return Path(option).expanduser()


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes) in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolved(path: Any) -> str:
    """The absolute path that keys a media file in the cache."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the feature cache keys media by file; got a {type(path).__name__} ({path!r:.80}) "
                        f"instead of a path")
    return str(Path(path).resolve())


def media_stamp(path: Any) -> tuple[str, int, int]:
    """(absolute path, size, mtime_ns) of a media file: what a cached row is valid for."""
    resolved_path = resolved(path)
    try:
        stat = os.stat(resolved_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: media file not found (feature cache)") from None
    return resolved_path, stat.st_size, stat.st_mtime_ns


def check_cacheable(encoder: PerceptualEncoder, datamodule: Any = None, stage: str = "train") -> None:
    """Refuse what a cache would silently get wrong: a trainable encoder or random augmentation."""
    if getattr(encoder, "trainable", False):
        raise ValueError(f"feature_cache stores a frozen encoder's outputs, but {encoder.name} is trainable "
                         f"(trainable=True); set feature_cache: null or freeze the encoder")
    options = []
    if getattr(encoder, "random_augmentation", False):
        options.append(f"{encoder.name} random_augmentation=True")
    if datamodule is not None and hasattr(datamodule, "random_augmentation"):
        option = datamodule.random_augmentation(stage)
        if option:
            options.append(option)
    if options:
        raise ValueError(
            f"feature_cache cannot be used with random augmentation ({'; '.join(options)}): the cache stores "
            f"one encoding per media file, but these draw new random media every epoch. Use eval-style "
            f"sampling (train_frame_sampling: uniform, augment: none, no random augmentation) or set "
            f"feature_cache: null"
        )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class CachedFeatures:
    """Read access to rows of a cache's shards, memory-mapped (``np.load(mmap_mode="r")``) and
    opened lazily in each process, so DataLoader workers share the page cache instead of copies."""

    def __init__(self, shards: Sequence[Path], meta: dict[str, Any], placements: dict[str, tuple[int, int] | str]):
        self.shards = [Path(s) for s in shards]
        self.placements = placements  # absolute path -> (shard, row), or the load error
        self.cls_index = meta["cls_index"]
        self.grid = tuple(meta["grid"]) if meta["grid"] is not None else None
        self.dtype = getattr(torch, meta["torch_dtype"])
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}

    def arrays(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._arrays:
            folder = self.shards[shard]
            self._arrays[shard] = (np.load(folder / "tokens.npy", mmap_mode="r"),
                                   np.load(folder / "mask.npy", mmap_mode="r"))
        return self._arrays[shard]

    def read(self, shard: int, row: int) -> PerceptualFeatures:
        """One file's features with a batch dimension of 1: tokens ``[1, L, N, D]``, mask ``[1, N]``."""
        tokens, mask = self.arrays(shard)
        values = torch.from_numpy(np.array(tokens[row]))[None].to(self.dtype)
        return PerceptualFeatures(values, torch.from_numpy(np.array(mask[row]))[None], self.cls_index, self.grid)


class FeatureCache:
    """The cache directory of one key (see the module docstring): build it, then read it."""

    def __init__(self, root: str | os.PathLike, key: dict[str, Any]) -> None:
        self.key = {"format": FORMAT_VERSION, **key}
        canonical = json.dumps(self.key, sort_keys=True, separators=(",", ":"))
        self.digest = hashlib.sha256(canonical.encode()).hexdigest()
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", str(key.get("name", "encoder")))[-48:]
        self.directory = resolve_root(root) / f"{label}-{self.digest[:20]}"
        self._canonical = canonical

    @classmethod
    def for_encoder(cls, root: str | os.PathLike, encoder: PerceptualEncoder,
                    media: dict[str, Any] | None = None) -> "FeatureCache":
        """The cache of ``encoder``'s current selection and weights, for media decoded as ``media``
        describes (the datamodule's :meth:`media_config`)."""
        return cls(root, {**encoder.cache_key(), "weights": weights_digest(encoder), "media": media or {}})

    # -- reading -----------------------------------------------------------------------------------
    def _shard_dirs(self) -> list[Path]:
        shards = self.directory / "shards"
        return sorted(p for p in shards.iterdir() if p.is_dir() and not p.name.startswith(".")) if shards.is_dir() else []

    def _entries(self) -> tuple[list[Path], dict[str, tuple[int, dict[str, Any]]], dict[str, Any] | None]:
        """Shards, path -> (shard, entry) with later shards winning, and the shared row metadata."""
        shards, entries, meta = self._shard_dirs(), {}, None
        for number, folder in enumerate(shards):
            path = folder / "index.json"
            try:
                index = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ValueError(f"{path}: unreadable feature-cache index ({error}); delete {folder}") from None
            if index.get("format") != FORMAT_VERSION:
                raise ValueError(f"{path}: feature-cache format {index.get('format')!r}, expected {FORMAT_VERSION}")
            shard_meta = {k: index[k] for k in ("cls_index", "grid", "torch_dtype", "shape")}
            if index["rows"]:
                if meta is not None and shard_meta != meta:
                    raise ValueError(f"{path}: rows of shape/layout {shard_meta} differ from the other shards' {meta}")
                meta = meta or shard_meta
            for entry in index["entries"]:
                entries[entry["path"]] = (number, entry)
        return shards, entries, meta

    def _check_key_file(self) -> None:
        path = self.directory / "key.json"
        if path.exists():
            stored = json.dumps(json.loads(path.read_text()), sort_keys=True, separators=(",", ":"))
            if stored != self._canonical:
                raise ValueError(f"{path}: this cache directory holds another key; delete {self.directory}")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".key-{os.getpid()}-{secrets.token_hex(4)}.json")
            temporary.write_text(json.dumps(self.key, indent=2, sort_keys=True) + "\n")
            os.replace(temporary, path)

    def lookup(self, media_paths: Sequence[Any]) -> tuple[CachedFeatures | None, list[tuple[str, int, int]]]:
        """The cached features of ``media_paths`` and the stamps of the files still to compute
        (absent, or changed since their row was written), each unique file once."""
        shards, entries, meta = self._entries()
        stamps = {media_stamp(p) for p in dict.fromkeys(media_paths)}
        todo = sorted(s for s in stamps if s[0] not in entries
                      or (entries[s[0]][1]["size"], entries[s[0]][1]["mtime_ns"]) != s[1:])
        if todo:
            return None, todo
        placements: dict[str, tuple[int, int] | str] = {}
        for path, _, _ in stamps:
            number, entry = entries[path]
            placements[path] = entry["error"] if "error" in entry else (number, entry["row"])
        if meta is None:  # every file failed to load: nothing to read, every sample is skipped
            meta = {"cls_index": None, "grid": None, "torch_dtype": "float32", "shape": None}
        return CachedFeatures(shards, meta, placements), []

    # -- building ----------------------------------------------------------------------------------
    @torch.no_grad()
    def build(self, encoder: PerceptualEncoder, media_paths: Sequence[Any], load: Callable[[Path], Any],
              batch_size: int = 32, chunk_size: int = 2048,
              preprocess: Callable[[Any], Any] | None = None) -> CachedFeatures:
        """Encode every file of ``media_paths`` that has no valid row (each unique file once, in
        batches, eval mode, no grad, on the encoder's device) and return read access to all of them.
        ``load`` decodes a file; ``preprocess`` (default ``encoder.preprocess``) and
        ``encoder.stack_media`` batch it. A file
        that fails to load is recorded as such: its samples are skipped, as without the cache. The
        encoder must be cacheable (:func:`check_cacheable`, which the datamodule's ``connect`` runs)."""
        cached, todo = self.lookup(media_paths)
        if cached is not None:
            return cached
        self._check_key_file()
        print(f"feature cache: encoding up to {len(todo)} media files with {encoder.name} into {self.directory}",
              flush=True)
        with _locked(self.directory / ".lock"):
            _, todo = self.lookup(media_paths)  # another builder may have written them meanwhile
            shards = self.directory / "shards"
            shards.mkdir(exist_ok=True)
            for stale in shards.glob(".tmp-*"):  # left by an interrupted build (the lock is ours)
                shutil.rmtree(stale, ignore_errors=True)
            was_training = encoder.training
            encoder.eval()
            try:
                for start in range(0, len(todo), chunk_size):
                    self._write_shard(encoder, todo[start : start + chunk_size], load, batch_size,
                                      preprocess or encoder.preprocess)
            finally:
                encoder.train(was_training)
        cached, todo = self.lookup(media_paths)
        if cached is None:
            raise RuntimeError(f"{self.directory}: {len(todo)} media files changed while the cache was built, "
                               f"e.g. {todo[0][0]}; build again once they stop changing")
        return cached

    def _write_shard(self, encoder: PerceptualEncoder, stamps: list[tuple[str, int, int]],
                     load: Callable[[Path], Any], batch_size: int, preprocess: Callable[[Any], Any]) -> None:
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}"
        temporary = self.directory / "shards" / f".tmp-{name}"
        temporary.mkdir()
        entries: list[dict[str, Any]] = []
        tokens = mask = None
        meta: dict[str, Any] = {"cls_index": None, "grid": None, "torch_dtype": "float32", "shape": None}
        rows = 0
        device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
        for start in range(0, len(stamps), batch_size):
            items, batch_stamps = [], []
            for path, size, mtime in stamps[start : start + batch_size]:
                entry = {"path": path, "size": size, "mtime_ns": mtime}
                try:
                    items.append(preprocess(load(Path(path))))
                except Exception as error:  # noqa: BLE001 - as MediaDataset: a bad file is skipped, not fatal
                    entries.append({**entry, "error": f"{path}: {type(error).__name__}: {error}"})
                    continue
                batch_stamps.append(entry)
            if not items:
                continue
            features = encoder(move_data_to_device(encoder.stack_media(items), device))
            values = features.tokens.detach()
            if tokens is None:
                dtype = _STORAGE.get(values.dtype)
                if dtype is None:
                    raise TypeError(f"{encoder.name}: features of dtype {values.dtype} cannot be cached; "
                                    f"valid: {sorted(str(d) for d in _STORAGE)}")
                shape = (len(stamps), *values.shape[1:])
                tokens = np.lib.format.open_memmap(temporary / "tokens.npy", mode="w+", dtype=dtype, shape=shape)
                mask = np.lib.format.open_memmap(temporary / "mask.npy", mode="w+", dtype=np.bool_, shape=shape[:1] + shape[2:3])
                meta = {"cls_index": features.cls_index, "grid": list(features.grid) if features.grid else None,
                        "torch_dtype": str(values.dtype).removeprefix("torch."), "shape": list(shape[1:])}
            elif list(values.shape[1:]) != meta["shape"]:
                raise ValueError(f"{encoder.name}: features of shape {list(values.shape[1:])} for "
                                 f"{batch_stamps[0]['path']}, but {meta['shape']} for earlier files; the cache "
                                 f"needs one shape per key")
            count = values.shape[0]
            tokens[rows : rows + count] = values.to(torch.float32 if values.dtype == torch.bfloat16 else values.dtype).cpu().numpy()
            mask[rows : rows + count] = features.mask.detach().cpu().numpy()
            for offset, entry in enumerate(batch_stamps):
                entries.append({**entry, "row": rows + offset})
            rows += count
        if tokens is None:  # every file failed to load
            np.save(temporary / "tokens.npy", np.zeros((0,), np.float32))
            np.save(temporary / "mask.npy", np.zeros((0,), np.bool_))
        else:
            tokens.flush()
            mask.flush()
            del tokens, mask
        index = {"format": FORMAT_VERSION, "rows": rows, **meta, "entries": entries}
        (temporary / "index.json").write_text(json.dumps(index) + "\n")
        os.rename(temporary, temporary.with_name(name))


class CachedFeatureDataset(Dataset):
    """A :class:`~perceptlm.data.base.MediaDataset`'s samples whose ``media`` are the cached
    features of their file (:class:`PerceptualFeatures` with a batch dimension of 1); the encoder
    does not run. Files that failed to load give ``media=None`` and the reason, as without the cache."""

    def __init__(self, samples: list[Sample], features: CachedFeatures) -> None:
        self.samples, self.features = samples, features
        by_media = {m: features.placements[resolved(m)] for m in dict.fromkeys(s.media for s in samples)}
        self.placements = [by_media[s.media] for s in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        sample, placement = self.samples[index], self.placements[index]
        if isinstance(placement, str):
            return Sample(sample.id, None, sample.prompt, sample.targets, {**sample.extra, "skipped": placement})
        media = self.features.read(*placement)
        return Sample(sample.id, media, sample.prompt, sample.targets, {**sample.extra, "source": str(sample.media)})


def stack_features(items: list[PerceptualFeatures]) -> PerceptualFeatures:
    """Batch per-sample cached features (the collator's ``stack_media`` with a feature cache)."""
    first = items[0]
    for item in items[1:]:
        if (item.cls_index, item.grid) != (first.cls_index, first.grid):
            raise ValueError(f"cached features disagree on cls_index/grid: {(item.cls_index, item.grid)} vs "
                             f"{(first.cls_index, first.grid)}")
    return PerceptualFeatures(torch.cat([i.tokens for i in items]), torch.cat([i.mask for i in items]),
                              first.cls_index, first.grid)


def cached_dataset(datamodule: Any, stage: str, dataset: Any) -> CachedFeatureDataset:
    """``dataset`` (a MediaDataset of ``datamodule``) reading its media's features from the cache
    at ``datamodule.feature_cache``, built first for the files that have no valid row, with the
    encoder the datamodule's ``connect`` received and checked."""
    encoder = getattr(datamodule, "encoder", None)
    if encoder is None:
        raise RuntimeError(
            f"{type(datamodule).__name__}(feature_cache={datamodule.feature_cache!r}) needs the encoder: call "
            f"datamodule.connect(model) or let Trainer.fit / the CLI connect it"
        )
    cache = FeatureCache.for_encoder(datamodule.feature_cache, encoder, datamodule.media_config(stage))
    load = datamodule.load_media
    if getattr(datamodule, "sampled_media", False):  # frame-sampling loaders: the deterministic (evaluation) read
        def load(path: Path, read: Callable[..., Any] = datamodule.load_media) -> Any:
            return read(path, False, None)
    deterministic = getattr(datamodule, "deterministic_preprocess", None)
    preprocess = deterministic(stage) if deterministic is not None else encoder.preprocess
    features = cache.build(encoder, [s.media for s in dataset.samples], load, batch_size=datamodule.eval_batch_size,
                           preprocess=preprocess)
    return CachedFeatureDataset(dataset.samples, features)
