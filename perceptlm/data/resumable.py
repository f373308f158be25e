"""A training ``DataLoader`` whose position within the epoch is part of the checkpoint.

Lightning saves ``state_dict()`` of every stateful training loader with the fit-loop state and
calls ``load_state_dict()`` on resume before the epoch's first batch is fetched
(``FitLoop.on_save_checkpoint`` and ``FitLoop._load_combined_loader_states`` in
``lightning/pytorch/loops/fit_loop.py``; a loader is stateful when it has both methods). A plain
``DataLoader`` is not, so a run resumed part-way through an epoch would start that epoch over.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader


class ResumableDataLoader(DataLoader):
    """Counts the batches it hands out in the current epoch; the state is ``{"epoch", "batches"}``.

    On resume in the same epoch, the sampler (an ``EpochShuffleSampler``) skips those batches'
    indices, so nothing is loaded for them and the rest of the epoch is the uninterrupted run's.
    A state from a finished epoch changes nothing (the next epoch starts from its beginning). The
    collator is told the epoch (``collate_fn.set_epoch``) before each epoch's first batch, and the
    worker seeds come from (seed, epoch), so neither depends on where a run was interrupted.
    ``PerceptionDataModule.state_dict`` carries the same state for when Lightning's path cannot.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = {"epoch": 0, "batches": 0}
        self._resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return dict(self._position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        if set(state) != {"epoch", "batches"}:
            raise KeyError(f"not a ResumableDataLoader state: {state!r}; expected keys 'epoch' and 'batches'")
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    def __iter__(self) -> Iterator[Any]:
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        # A generator: this runs at the first next(), after Lightning has called set_epoch.
        epoch = int(getattr(self.sampler, "epoch", 0))
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume and resume["epoch"] == epoch and resume["batches"] < len(self) else 0
        if skip:
            if not hasattr(self.sampler, "skip") or self.batch_size is None:
                raise TypeError(f"resuming part-way through an epoch needs a sampler with skip() and a batch_size; "
                                f"got {type(self.sampler).__name__} and batch_size={self.batch_size}")
            self.sampler.skip(skip * self.batch_size)  # every batch but an epoch's last is full
        if hasattr(self.collate_fn, "set_epoch"):
            self.collate_fn.set_epoch(epoch)
        # The iterator draws its worker base seed from `generator`, or from the global torch RNG when
        # there is none: that draw would happen again on a resume part-way through the epoch and
        # shift dropout masks. A generator from (seed, epoch) keeps the global RNG out of it.
        seed = int(getattr(self.sampler, "seed", 0))
        self.generator = torch.Generator().manual_seed(int(np.random.SeedSequence((seed, epoch)).generate_state(1)[0]))
        self._position = {"epoch": epoch, "batches": skip}
        for batch in super().__iter__():
            self._position["batches"] += 1
            yield batch
