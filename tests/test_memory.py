"""Long runs: memory does not grow from epoch to epoch while fitting with a generation-based
validation every epoch (KV caches, prediction records and logged values are released)."""

from __future__ import annotations

import gc
import tracemalloc

import lightning as L
import psutil
import torch
from lightning.pytorch.callbacks import Callback

from perceptlm import build
from perceptlm.data import EasyVQADataModule

EPOCHS = 6


def _is_tensor(obj: object) -> bool:
    try:
        return isinstance(obj, torch.Tensor)
    except ReferenceError:  # a weakref.proxy whose object is gone (left by earlier tests)
        return False


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if _is_tensor(obj))


class MemoryProbe(Callback):
    """After each epoch (its validation included): live torch tensors, Python heap (tracemalloc),
    resident memory, and what the module holds from the evaluation."""

    def __init__(self) -> None:
        self.tensors: list[int] = []
        self.heap: list[int] = []
        self.rss: list[int] = []
        self.records: list[int] = []
        self.validations = 0

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.validations += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.records.append(len(getattr(pl_module, "_records", [])))
        self.tensors.append(_live_tensors())
        self.heap.append(tracemalloc.get_traced_memory()[0])
        self.rss.append(psutil.Process().memory_info().rss)


def test_memory_does_not_grow_across_epochs(tiny_encoder, tiny_llm):
    module = build("depalm-qp-l0", tiny_encoder, tiny_llm, connector={"width": 64, "num_queries": 4},
                           max_new_tokens=4, eval_blind=True)
    data = EasyVQADataModule(batch_size=4, limit=8, val_limit=6, eval_batch_size=3)
    probe = MemoryProbe()
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[probe])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tracemalloc.start()
    try:
        trainer.fit(module, data)
    finally:
        tracemalloc.stop()
        torch.set_num_threads(threads)

    assert probe.validations == EPOCHS and len(probe.tensors) == EPOCHS  # generation ran after every epoch
    assert trainer.callback_metrics["val/num_samples"].item() == 6
    assert probe.records == [0] * EPOCHS  # prediction records released after each validation
    # after the first epochs (lazy buffers, optimizer state, Lightning's result objects) nothing accumulates
    assert probe.tensors[2] == probe.tensors[-1], probe.tensors
    assert probe.heap[-1] - probe.heap[2] < 64 * 1024, probe.heap  # bytes of Python objects (measured: a few KB)
    assert probe.rss[-1] - probe.rss[2] < 32 * 2**20, probe.rss  # resident memory, allocator noise allowed
