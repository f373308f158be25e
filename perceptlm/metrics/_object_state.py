"""torchmetrics support for states that hold arbitrary Python objects (strings, ids).

torchmetrics synchronises list states with tensor all-gathers, which cannot carry strings.
:class:`ObjectStateMetric` keeps such lists out of the tensor path: they are gathered with
``torch.distributed.all_gather_object`` (rank order), are not moved by ``.to(device)``, and
are deep-copied for the sync/unsync cache like any list state.  Records can carry a sample id
so that samples seen twice (``DistributedSampler`` pads the last batches by repeating
samples) are counted once: :meth:`ObjectStateMetric.deduplicate`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

__all__ = ["ObjectStateMetric", "plain_id"]


def plain_id(sample_id: Hashable | None) -> Hashable | None:
    """A sample id as a plain Python value (0-d tensors become numbers, so ids hash by value)."""
    if isinstance(sample_id, torch.Tensor):
        return sample_id.item()
    return sample_id


class ObjectStateMetric(Metric):
    """Base class for metrics with Python-object list states (see module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._object_states: tuple[str, ...] = ()

    def add_object_state(self, name: str) -> None:
        """Register an (initially empty) list state whose items may be any picklable object."""
        self.add_state(name, default=[], dist_reduce_fx=None)
        self._object_states = (*self._object_states, name)

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = ()) -> torch.nn.Module:
        return super()._apply(fn, exclude_state=(*exclude_state, *self._object_states))

    def _move_list_states_to_cpu(self) -> None:
        for key in self._defaults:
            value = getattr(self, key)
            if key not in self._object_states and isinstance(value, Sequence):
                setattr(self, key, [v.to("cpu") for v in value])

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        reductions = {name: self._reductions.pop(name) for name in self._object_states}
        try:
            super()._sync_dist(dist_sync_fn, process_group=process_group)
        finally:
            self._reductions.update(reductions)
        group = process_group or self.process_group
        local = {name: list(getattr(self, name)) for name in self._object_states}
        gathered: list[dict[str, list] | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, local, group=group)
        for name in self._object_states:
            setattr(self, name, [item for part in gathered for item in part[name]])

    def warn_if_unkeyed_in_ddp(self, unkeyed: bool) -> None:
        """Warn (once) when samples without ids were gathered from several processes, since
        repeats added by a distributed sampler are then counted twice."""
        if unkeyed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 \
                and not getattr(self, "_warned_unkeyed", False):
            self._warned_unkeyed = True
            warnings.warn(f"{type(self).__name__}: samples without sample_ids in a distributed run; samples "
                          "repeated by the sampler are counted more than once", RuntimeWarning, stacklevel=3)

    @staticmethod
    def deduplicate(ids: Sequence[Hashable | None], *columns: Sequence[Any]) -> tuple[list[Any], ...]:
        """Keep the first record of every id (records without id are all kept), then order the
        records by id when every record has one and the ids are mutually comparable, so the
        result does not depend on how samples were spread over processes."""
        seen: dict[Hashable, Any] = {}
        kept: list[int] = []
        for k, sample_id in enumerate(ids):
            if sample_id is None:
                kept.append(k)
                continue
            first = seen.setdefault(sample_id, k)
            if first != k:
                if any(col[first] != col[k] for col in columns):
                    warnings.warn(f"sample id {sample_id!r} was recorded twice with different values; "
                                  "keeping the first", RuntimeWarning, stacklevel=3)
                continue
            kept.append(k)
        if kept and all(ids[k] is not None for k in kept):
            try:
                kept.sort(key=lambda k: ids[k])
            except TypeError:
                pass
        return tuple([col[k] for k in kept] for col in (ids, *columns))
