"""Interrupted runs resume exactly: SIGTERM and SIGKILL sent to real `perceptlm fit` processes, a
kill in the middle of a checkpoint write, and in-process resumes from an epoch's end and from
part-way through an epoch, each ending with the trainable weights of an uninterrupted run."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from perceptlm import build
from perceptlm.training.callbacks import EXIT_PREEMPTED
from perceptlm.training.checkpointing import AtomicCheckpointIO
from perceptlm.cli import cli
from perceptlm.data import EasyVQADataModule, Sample

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "experiments" / "easyvqa" / "depalm_qp_l0.yaml"
STEPS = 20  # 32 questions in batches of 4: 8 steps an epoch, so 2.5 epochs
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def _args(run_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", str(CONFIG),
        "--model.init_args.encoder", "test-tiny-vit", "--model.init_args.llm", "test-tiny-llama",
        "--model.init_args.connector", '{"width": 64, "num_queries": 4}',
        "--data.init_args.limit", "32", "--data.init_args.batch_size", "4",
        "--trainer.max_steps", str(STEPS), "--trainer.deterministic", "true", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir),
        "--trainer.callbacks.init_args.dirpath", str(run_dir / "checkpoints"),
        "--trainer.callbacks.init_args.every_n_train_steps", "4", *extra,
    ]


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    """A real ``perceptlm fit`` process (its output in ``run.log``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "run.log", "w")  # noqa: SIM115 - the child holds it
    command = [sys.executable, "-m", "perceptlm.cli", "fit", *_args(run_dir, *extra)]
    return subprocess.Popen(command, cwd=run_dir, env=ENV, stdout=log, stderr=subprocess.STDOUT)


@contextmanager
def _one_thread():
    """One intra-op thread, as the subprocesses have (OMP_NUM_THREADS=1): same arithmetic, and no
    thread contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit_in_process(run_dir: Path, *extra: str):
    with _one_thread():
        return cli(["fit", *_args(run_dir, *extra)]).trainer


def _wait_for(condition, process: subprocess.Popen, run_dir: Path, timeout: float = 180) -> None:
    """Poll ``condition()`` while the process runs (no fixed sleeps)."""
    end = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended ({process.returncode}) first:\n{(run_dir / 'run.log').read_text()[-3000:]}")
        if time.monotonic() > end:
            process.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.02)


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, f"trainable weights differ by {worst}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    _fit_in_process(run_dir)
    final = _load(run_dir / "checkpoints" / "last.ckpt")
    assert final["global_step"] == STEPS
    return final["state_dict"]


def _resume(run_dir: Path, saved_step: int, uninterrupted: dict[str, torch.Tensor]) -> None:
    last = run_dir / "checkpoints" / "last.ckpt"
    assert 0 < _load(last)["global_step"] == saved_step < STEPS
    trainer = _fit_in_process(run_dir, "--ckpt_path", "last")
    assert Path(trainer.ckpt_path) == last and trainer.global_step == STEPS  # resumed, not started over
    _assert_same_weights(_load(last)["state_dict"], uninterrupted)


def test_sigterm_saves_and_resume_matches_uninterrupted(tmp_path, uninterrupted):
    last = tmp_path / "checkpoints" / "last.ckpt"
    process = _start(tmp_path)
    _wait_for(last.exists, process, tmp_path)  # the step-4 checkpoint: training is under way
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=120)
    log = (tmp_path / "run.log").read_text()
    assert code == EXIT_PREEMPTED, log[-3000:]
    saved = _load(last)["global_step"]
    assert 4 <= saved < STEPS and f"pre-empted at step {saved}" in log
    assert not list(last.parent.glob(".*.partial"))
    _resume(tmp_path, saved, uninterrupted)


def test_sigkill_mid_checkpoint_write_keeps_previous_and_resumes(tmp_path, uninterrupted):
    """SIGKILL while the step-8 checkpoint is being written (the writer slowed down through its
    documented ``chunk_delay`` test hook): the step-4 checkpoint is intact and the run resumes from it."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    partial = last.with_name(".last.ckpt.partial")
    slow = '{"class_path": "perceptlm.training.checkpointing.AtomicCheckpointIO", "init_args": {"chunk_delay": 0.2}}'
    process = _start(tmp_path, "--trainer.plugins", slow)
    _wait_for(last.exists, process, tmp_path)  # the first checkpoint (step 4) is complete
    before = last.read_bytes()
    _wait_for(lambda: partial.exists() and partial.stat().st_size > 0, process, tmp_path)  # step 8 is being written
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert 0 < partial.stat().st_size < len(before)  # the kill landed mid-write
    with pytest.raises(Exception):  # what a non-atomic writer would have left as last.ckpt
        torch.load(partial, weights_only=True)
    assert last.read_bytes() == before
    checkpoint = _load(last)
    assert checkpoint["global_step"] == 4 and checkpoint["optimizer_states"] and checkpoint["state_dict"]
    _resume(tmp_path, 4, uninterrupted)
    assert not partial.exists()  # the next write of last.ckpt replaced the leftover


def test_atomic_io_replaces_whole_file(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "sub" / "x.ckpt"
    io.save_checkpoint({"a": torch.arange(3)}, target)
    io.save_checkpoint({"a": torch.arange(5)}, target)
    assert torch.equal(io.load_checkpoint(target)["a"], torch.arange(5))
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.ckpt"]
    io.save_checkpoint({"a": Pickled()}, target)  # not tensors and plain data: code could run on load
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        io.load_checkpoint(target)
    with pytest.raises(ValueError, match="chunk_delay"):
        AtomicCheckpointIO(chunk_delay=-1)


class Pickled:
    """An arbitrary object, which ``weights_only=True`` loading refuses."""


def test_sampler_shards_ranks_itself_and_skips_on_resume():
    """Under DDP each rank takes its share of the (seed, epoch) shuffle (Lightning keeps a
    DistributedSampler as it is); ``skip`` starts the next iteration part-way, once."""
    from perceptlm.data.base import EpochShuffleSampler

    shards = [EpochShuffleSampler(11, seed=3, num_replicas=2, rank=rank) for rank in range(2)]
    for sampler in shards:
        sampler.set_epoch(1)
    orders = [list(sampler) for sampler in shards]
    assert len(orders[0]) == len(orders[1]) == len(shards[0]) == 6  # padded like DistributedSampler
    assert set(orders[0] + orders[1]) == set(range(11))
    single = EpochShuffleSampler(11, seed=3)
    single.set_epoch(1)
    padded = list(single) + list(single)[:1]
    assert orders == [padded[0::2], padded[1::2]]  # rank r: positions r, r+2, ... of the one shuffle
    shards[1].skip(4)
    assert list(shards[1]) == orders[1][4:] and list(shards[1]) == orders[1]


# -- in process: the exact resume points --------------------------------------------------------------
class MultiTargetEasyVQA(EasyVQADataModule):
    """easy-VQA with three phrasings of each answer, so the collator's choice of target matters."""

    def load_samples(self, split: str) -> list[Sample]:
        samples = super().load_samples(split)
        return [Sample(s.id, s.media, s.prompt, [s.targets[0], f"it is {s.targets[0]}", f"{s.targets[0]}, I think"])
                for s in samples]


class Recorder(Callback):
    """What each step trained on: sample ids, the tokens (so the picked targets) and the RNG state."""

    def __init__(self) -> None:
        self.steps: dict[int, tuple] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps[trainer.global_step] = (tuple(batch.ids), batch.input_ids.tolist(),
                                           torch.get_rng_state().sum().item())


@pytest.fixture
def one_thread():
    with _one_thread():
        yield


def _fit(tiny_encoder, tiny_llm, run_dir: Path, ckpt_path: Path | None = None, **limits) -> tuple[dict, Recorder]:
    L.seed_everything(0)
    module = build("depalm-qp-l0", tiny_encoder, tiny_llm, connector={"width": 64, "num_queries": 4})
    recorder = Recorder()
    callbacks = [recorder,
                 ModelCheckpoint(dirpath=run_dir, filename="{step}", every_n_train_steps=1, save_top_k=-1),
                 ModelCheckpoint(dirpath=run_dir, filename="end-{epoch}", save_on_train_epoch_end=True, save_top_k=-1)]
    trainer = L.Trainer(accelerator="cpu", deterministic=True, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=callbacks, **limits)
    trainer.fit(module, MultiTargetEasyVQA(batch_size=4, limit=16), ckpt_path=ckpt_path)
    keep = module.model.trainable_keys()
    return {k: v.detach().clone() for k, v in module.model.state_dict().items() if k in keep}, recorder


@pytest.mark.parametrize("limits, resume_from", [
    ({"max_steps": 10}, ["end-epoch=0.ckpt", "step=4.ckpt", "step=6.ckpt"]),  # epoch end, last batch, mid-epoch
    ({"max_epochs": 2}, ["end-epoch=0.ckpt", "step=5.ckpt"]),  # epoch-based training follows other paths
])
def test_resume_is_exact_at_epoch_end_and_mid_epoch(tmp_path, tiny_encoder, tiny_llm, one_thread, limits, resume_from):
    weights, reference = _fit(tiny_encoder, tiny_llm, tmp_path / "full", **limits)
    assert len({ids for ids, _, _ in reference.steps.values()}) == len(reference.steps)  # each batch differs
    for name in resume_from:
        checkpoint = tmp_path / "full" / name
        start = _load(checkpoint)["global_step"]
        resumed, recorder = _fit(tiny_encoder, tiny_llm, tmp_path / name, ckpt_path=checkpoint, **limits)
        assert sorted(recorder.steps) == [s for s in sorted(reference.steps) if s >= start], name
        for step, seen in recorder.steps.items():
            assert seen == reference.steps[step], f"{name}: step {step} trained on other data or RNG state"
        _assert_same_weights(resumed, weights)
