"""Feature cache: same loss as live features, the encoder never runs, keys invalidate, random
augmentation is refused, rows are memory-mapped and deduplicated, and the CLI trains from it."""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from perceptlm import build
from perceptlm.cli import cli
from perceptlm.data import EasyVQADataModule
from perceptlm.data.easyvqa import default_root
from perceptlm.data.feature_cache import FeatureCache, resolve_root
from perceptlm.encoders.base import PerceptualFeatures

CONFIG = Path(__file__).parents[1] / "experiments" / "easyvqa" / "depalm_qp_l0.yaml"


@pytest.fixture
def small_root(tmp_path):
    """An easy-VQA folder of 6 images: 16 train questions on 4 images, 4 test questions on 2."""
    source, root = default_root(), tmp_path / "easy-vqa"
    for split, images, per_image in (("train", 4, 4), ("test", 2, 2)):
        questions = json.loads((source / split / "questions.json").read_text())
        kept = [q for i in range(images) for q in [q for q in questions if q[2] == i][:per_image]]
        (root / split / "images").mkdir(parents=True)
        (root / split / "questions.json").write_text(json.dumps(kept))
        for image_id in range(images):
            shutil.copy(source / split / "images" / f"{image_id}.png", root / split / "images" / f"{image_id}.png")
    return root


def _module(tiny_encoder, tiny_llm):
    return build("depalm-qp-l0", tiny_encoder, tiny_llm, connector={"width": 64, "num_queries": 4})


def _datamodule(module, root, cache=None, batch_size=4):
    dm = EasyVQADataModule(data_root=str(root), batch_size=batch_size, test_limit=4, val_limit=4, feature_cache=cache)
    dm.connect(module.model)
    dm.setup("fit")
    return dm


def _with_encoder(module, encoder):
    """``module`` as ``connect`` reads it, with another encoder."""
    return SimpleNamespace(tokenizer=module.tokenizer, encoder=encoder, stop_token_ids=[])


def _count_calls(monkeypatch, encoder) -> list[int]:
    """Batch sizes of every encoder forward (the instance's own attribute shadows the class's)."""
    calls: list[int] = []
    forward = encoder.forward

    def counting(media):
        calls.append(len(media))
        return forward(media)

    monkeypatch.setattr(encoder, "forward", counting, raising=False)
    return calls


def _forbid(monkeypatch, encoder) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("the encoder ran although the features are cached")

    monkeypatch.setattr(encoder, "forward", boom, raising=False)
    monkeypatch.setattr(encoder, "hidden_states", boom, raising=False)


def test_cached_training_loss_equals_live(small_root, tmp_path, tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm)
    live = _datamodule(module, small_root, batch_size=6)
    cached = _datamodule(module, small_root, cache=str(tmp_path / "c"), batch_size=6)
    losses = {}
    for name, dm in (("live", live), ("cached", cached)):
        model, steps = copy.deepcopy(module).train(), []
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        torch.manual_seed(0)  # the same dropout masks in both runs
        for batch in dm.train_dataloader():
            if name == "cached":
                assert isinstance(batch.media, PerceptualFeatures) and batch.media.tokens.shape[1:] == (1, 17, 64)
                assert batch.media.cls_index == 0 and batch.media.grid == (4, 4)
            loss = model.model.loss(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps.append((batch.ids, loss.item()))
        losses[name] = steps
    assert [ids for ids, _ in losses["live"]] == [ids for ids, _ in losses["cached"]] and len(losses["live"]) == 3
    live_losses, cached_losses = (np.array([v for _, v in losses[k]]) for k in ("live", "cached"))
    np.testing.assert_allclose(cached_losses, live_losses, rtol=0, atol=1e-5)
    assert np.ptp(live_losses) > 1e-3  # the steps trained: a comparison of different losses


def test_encoder_never_runs_when_training_from_the_cache(small_root, tmp_path, tiny_encoder, tiny_llm, monkeypatch):
    from lightning.pytorch import Trainer

    module = _module(tiny_encoder, tiny_llm)
    warm = _datamodule(module, small_root, cache=str(tmp_path))
    warm.train_dataloader(), warm.val_dataloader()  # builds train and val rows
    live_batch = next(iter(_datamodule(module, small_root).train_dataloader()))
    _forbid(monkeypatch, module.model.encoder)
    with pytest.raises(AssertionError, match="the encoder ran"):
        module.model.loss(live_batch)  # the trap works
    dm = EasyVQADataModule(data_root=str(small_root), batch_size=4, test_limit=4, val_limit=4, feature_cache=str(tmp_path))
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)  # InterfaceModule.setup connects the data (encoder included); validation generates
    assert trainer.global_step == 2 and dm.encoder is module.model.encoder
    assert trainer.callback_metrics["val/num_samples"] == 4


def test_key_changes_give_another_cache(tmp_path, tiny_encoder):
    base = FeatureCache.for_encoder(tmp_path, tiny_encoder)
    assert FeatureCache.for_encoder(tmp_path, tiny_encoder.with_selection()).directory == base.directory
    reweighted = copy.deepcopy(tiny_encoder)
    with torch.no_grad():
        next(reweighted.parameters()).add_(1e-3)
    renormalised = copy.deepcopy(tiny_encoder)
    renormalised.image_mean = (0.4, 0.5, 0.5)
    variants = [tiny_encoder.with_selection(layers=2), tiny_encoder.with_selection(layers=[0]),
                tiny_encoder.with_selection(tokens="cls"), tiny_encoder.with_selection(tokens="patches"),
                tiny_encoder.with_selection(final_norm=False), reweighted, renormalised]
    directories = {FeatureCache.for_encoder(tmp_path, e).directory for e in variants}
    directories.add(FeatureCache.for_encoder(tmp_path, tiny_encoder, {"num_frames": 8}).directory)
    assert len(directories) == len(variants) + 1 and base.directory not in directories


def test_changed_media_file_is_recomputed(small_root, tmp_path, tiny_encoder, monkeypatch):
    from perceptlm.data.base import load_image

    encoder = tiny_encoder.with_selection()
    calls = _count_calls(monkeypatch, encoder)
    images = sorted((small_root / "train" / "images").glob("*.png"))
    cache = FeatureCache.for_encoder(tmp_path, encoder)
    cache.build(encoder, images, load_image, batch_size=3)
    assert sum(calls) == 4
    cache.build(encoder, images, load_image, batch_size=3)
    assert sum(calls) == 4  # nothing to recompute
    Image.new("RGB", (64, 64), (200, 30, 30)).save(images[1])  # rewritten: new size and mtime
    stat = images[2].stat()
    os.utime(images[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched only
    features = cache.build(encoder, images, load_image, batch_size=3)
    assert sum(calls) == 6 and calls[-1] == 2
    placement = features.placements[str(images[1].resolve())]
    with torch.no_grad():
        fresh = encoder(encoder.preprocess(load_image(images[1]))[None])
    torch.testing.assert_close(features.read(*placement).tokens, fresh.tokens, rtol=0, atol=1e-6)
    assert len(list((cache.directory / "shards").iterdir())) == 2
    monkeypatch.undo()
    _forbid(monkeypatch, encoder)  # valid rows: served without the encoder
    FeatureCache.for_encoder(tmp_path, tiny_encoder).build(encoder, images, load_image)


def test_random_augmentation_and_trainable_encoders_are_refused(small_root, tmp_path, tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm)
    augmented = tiny_encoder.with_selection()
    augmented.random_augmentation = True
    dm = EasyVQADataModule(data_root=str(small_root), feature_cache=str(tmp_path))
    with pytest.raises(ValueError, match=r"random augmentation .*random_augmentation=True.*feature_cache: null"):
        dm.connect(_with_encoder(module, augmented))
    dm.setup("fit")  # a refused encoder is not kept: no cache can be built with it
    with pytest.raises(RuntimeError, match="needs the encoder"):
        dm.train_dataloader()

    class FrameSampled(EasyVQADataModule):
        sampled_media = True
        train_frame_sampling = "random"

    sampled = FrameSampled(data_root=str(small_root), feature_cache=str(tmp_path))
    with pytest.raises(ValueError, match=r"train_frame_sampling='random'.*train_frame_sampling: uniform"):
        sampled.connect(module.model)
    sampled.train_frame_sampling = "uniform"
    sampled.connect(module.model)  # eval-style sampling: allowed
    FrameSampled(data_root=str(small_root)).connect(module.model)  # no cache: nothing to refuse
    trainable = tiny_encoder.with_selection()
    trainable.trainable = True
    with pytest.raises(ValueError, match="trainable"):
        dm.connect(_with_encoder(module, trainable))


def test_rows_are_memory_mapped_and_deduplicated(small_root, tmp_path, tiny_encoder, tiny_llm, monkeypatch):
    module = _module(tiny_encoder, tiny_llm)
    calls = _count_calls(monkeypatch, module.model.encoder)
    (small_root / "train" / "images" / "3.png").write_bytes(b"not a png")  # one unreadable file
    dm = _datamodule(module, small_root, cache=str(tmp_path))
    batches = list(dm.train_dataloader())
    samples = dm.datasets["train"].samples
    assert len(samples) == 16 and len({s.media for s in samples}) == 4
    assert sum(calls) == 3  # each readable image once, not once per question
    dataset = dm._cached["train"]
    [shard] = dataset.features.shards
    assert np.load(shard / "tokens.npy", mmap_mode="r").shape == (4, 1, 17, 64)
    tokens, mask = dataset.features.arrays(0)
    assert isinstance(tokens, np.memmap) and isinstance(mask, np.memmap) and mask.dtype == np.bool_
    assert len(pickle.dumps(dataset)) < tokens.nbytes  # workers re-open the map instead of copying it
    skipped = [reason for batch in batches for _, reason in batch.skipped]
    assert len(skipped) == 4 and all("3.png" in r and "UnidentifiedImageError" in r for r in skipped)
    assert sum(len(b.ids) for b in batches) == 12


def test_auto_root_and_missing_encoder(small_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPTLM_CACHE", str(tmp_path))
    assert resolve_root("auto") == tmp_path / "features"
    dm = EasyVQADataModule(data_root=str(small_root), feature_cache="auto")  # not connected: no encoder
    dm.setup("fit")
    with pytest.raises(RuntimeError, match=r"needs the encoder: .*datamodule.connect\(model\)"):
        dm.train_dataloader()


def test_cli_fit_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPTLM_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    run = cli(["fit", "--config", str(CONFIG),
         "--model.init_args.encoder", "test-tiny-vit", "--model.init_args.llm", "test-tiny-llama",
         "--model.init_args.connector", '{"width": 64, "num_queries": 4}',
         "--data.init_args.limit", "16", "--data.init_args.batch_size", "4",
         "--data.init_args.feature_cache", "auto",
         "--trainer.max_steps", "2", "--trainer.default_root_dir", str(run_dir),
         "--trainer.logger", "false", "--trainer.callbacks.init_args.dirpath", str(run_dir / "checkpoints")])
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    [directory] = (tmp_path / "cache" / "features").iterdir()
    assert directory.name.startswith("test-tiny-vit-") and json.loads((directory / "key.json").read_text())["layers"]
    [index] = directory.glob("shards/*/index.json")
    unique = {s.media for s in run.datamodule.datasets["train"].samples}
    assert json.loads(index.read_text())["rows"] == len(unique) > 1  # one row per image of the 16 questions


def test_concurrent_builders_serialise(small_root, tmp_path, tiny_encoder, monkeypatch):
    """Two builders at once (as DDP ranks): one encodes, the other waits on the lock and reads."""
    import threading
    import time

    from perceptlm.data.base import load_image

    encoder = tiny_encoder.with_selection()
    calls = _count_calls(monkeypatch, encoder)
    images = sorted((small_root / "train" / "images").glob("*.png"))

    def slow_load(path):
        time.sleep(0.05)  # widen the window in which both builders run
        return load_image(path)

    results, errors = [], []

    def build():
        try:
            results.append(FeatureCache.for_encoder(tmp_path, encoder).build(encoder, images, slow_load, batch_size=2))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 2
    assert sum(calls) == 4  # each image encoded once in all
    shards = list((FeatureCache.for_encoder(tmp_path, encoder).directory / "shards").iterdir())
    assert len(shards) == 1 and not shards[0].name.startswith(".")
    for path in images:
        a, b = (r.read(*r.placements[str(path.resolve())]).tokens for r in results)
        assert torch.equal(a, b)


def test_video_cache_needs_uniform_training_frames(tmp_path, tiny_llm):
    """Random training frames are refused; with uniform (segment-centre) frames the cached features
    are the live encoder's on the same clips."""
    from perceptlm import zoo
    from perceptlm.data import SynthVideoDataModule

    encoder = zoo.load_encoder("test-tiny-video")
    module = build("depalm-qp-l0", encoder, tiny_llm, connector={"width": 64, "num_queries": 4})
    kwargs = dict(data_root=str(tmp_path / "clips"), num_train=4, num_test=2, clip_frames=8, frame_size=32, batch_size=4)

    def datamodule(**extra):
        dm = SynthVideoDataModule(**kwargs, **extra)
        dm.prepare_data()
        dm.connect(module.model)
        return dm

    with pytest.raises(ValueError, match=r"train_frame_sampling='random'.*train_frame_sampling: uniform"):
        datamodule(feature_cache=str(tmp_path / "cache"))
    live, cached = datamodule(train_frame_sampling="uniform"), datamodule(train_frame_sampling="uniform",
                                                                          feature_cache=str(tmp_path / "cache"))
    live.setup("fit"), cached.setup("fit")
    live_batch, cached_batch = next(iter(live.train_dataloader())), next(iter(cached.train_dataloader()))
    assert live_batch.ids == cached_batch.ids and cached_batch.media.tokens.shape[0] == 4
    with torch.no_grad():
        expected = module.model.encoder(live_batch.media)
    torch.testing.assert_close(cached_batch.media.tokens, expected.tokens, rtol=0, atol=1e-6)
    assert torch.equal(cached_batch.media.mask, expected.mask)
    assert (cached_batch.media.cls_index, cached_batch.media.grid) == (expected.cls_index, expected.grid)
