"""Training and evaluation samplers of :class:`~perceptlm.data.base.PerceptionDataModule`: a
seeded per-epoch shuffle that can skip the batches a resumed epoch already saw, and an evaluation
sharding that neither pads nor drops."""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler


class EpochShuffleSampler(DistributedSampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order as an
    uninterrupted one (Lightning calls :meth:`set_epoch`; it is passed on to ``dataset`` when given,
    for per-epoch media sampling). Under ``torch.distributed`` rank r takes positions r, r+W, ...
    of the shuffle (padded like ``DistributedSampler``), so Lightning keeps this sampler as it is.
    :meth:`skip` starts the next iteration part-way (a resumed epoch, see ``ResumableDataLoader``)."""

    def __init__(self, size: int, seed: int, dataset: Any = None, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        num_replicas = num_replicas or (torch.distributed.get_world_size() if distributed else 1)
        rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        super().__init__(dataset if dataset is not None else range(size), num_replicas=num_replicas, rank=rank,
                         shuffle=True, seed=seed, drop_last=False)
        self.size, self._skip = size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def skip(self, count: int) -> None:
        """Leave out the first ``count`` indices of this rank's next iteration (once)."""
        self._skip = count

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.num_replicas > 1:
            order = (order * math.ceil(self.total_size / max(1, self.size)))[: self.total_size]
            order = order[self.rank : self.total_size : self.num_replicas]
        skip, self._skip = self._skip, 0
        return iter(order[skip:])

    def __len__(self) -> int:
        return self.num_samples


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank r takes samples r, r+W, r+2W, ...: no padding duplicates and no drops."""

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))
