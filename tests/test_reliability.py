"""Faults and bad input: unreadable media are skipped and counted, too many is an error; non-finite
losses stop the run or skip the step; odd image modes load."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from perceptlm import build
from perceptlm.data import EasyVQADataModule


def _dataset(root: Path, files: dict[str, bytes | None]) -> Path:
    """A tiny easy-VQA layout (train and test splits alike): one question per image file
    (None = a real PNG)."""
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True)
        questions = []
        for i, (name, content) in enumerate(files.items()):
            path = root / split / "images" / f"{i}.png"
            if content is None:
                Image.fromarray(np.full((16, 16, 3), 40 * i % 255, dtype=np.uint8)).save(path)
            else:
                path.write_bytes(content)
            questions.append([f"what shape is {name}?", "circle", i])
        (root / split / "questions.json").write_text(json.dumps(questions))
    return root


def _fit(module, root: Path, steps: int = 2, batch_size: int = 2) -> L.Trainer:
    data = EasyVQADataModule(data_root=str(root), batch_size=batch_size)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False)
    trainer.fit(module, data)
    return trainer


def test_corrupt_media_are_skipped_and_counted(tmp_path, tiny_encoder, tiny_llm, capsys):
    png = (tmp_path / "ok.png")
    Image.new("RGB", (8, 8), "red").save(png)
    truncated = png.read_bytes()[:20]
    root = _dataset(tmp_path / "data", {"a": None, "b": b"not an image", "c": None, "d": truncated,
                                        "e": None, "f": None, "g": None, "h": None})
    module = build("depalm-qp-l0", tiny_encoder, tiny_llm, connector={"num_queries": 2},
                           max_skipped_fraction=0.5)
    trainer = _fit(module, root, steps=4)
    assert trainer.global_step == 4  # the run went on
    assert trainer.callback_metrics["data/train_skipped"].item() == 2.0
    out = capsys.readouterr().out
    assert "skipped train sample train-1" in out and "1.png" in out


def test_too_many_skipped_is_an_error(tmp_path, tiny_encoder, tiny_llm):
    root = _dataset(tmp_path / "data", {"a": None, "b": b"broken", "c": b"broken", "d": None})
    module = build("depalm-qp-l0", tiny_encoder, tiny_llm, connector={"num_queries": 2},
                           max_skipped_fraction=0.1)
    with pytest.raises(RuntimeError, match=r"2 of 4 train samples .* max_skipped_fraction=0.1"):
        _fit(module, root, steps=2)


def test_decompression_bomb_is_refused_not_decoded(tmp_path, tiny_encoder, tiny_llm, capsys):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)  # 400 Mpixels: above PIL's bomb limit, small on disk
    root = _dataset(tmp_path / "data", {"a": None, "bomb": bomb.read_bytes()})
    module = build("depalm-qp-l0", tiny_encoder, tiny_llm, connector={"num_queries": 2},
                           max_skipped_fraction=0.5)
    _fit(module, root, steps=1)
    assert "DecompressionBombError" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "I;16"])
def test_image_modes_load_as_rgb(tmp_path, tiny_encoder, mode):
    from perceptlm.data.base import load_image

    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    Image.new(mode, (20, 10)).save(path)
    pixels = tiny_encoder.preprocess(load_image(path))
    assert pixels.shape == (3, 32, 32) and torch.isfinite(pixels).all()


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_loss_is_never_silent(tmp_path, tiny_encoder, tiny_llm, policy, monkeypatch, capsys):
    root = _dataset(tmp_path / "data", {str(i): None for i in range(8)})
    module = build("depalm-qp-l0", tiny_encoder, tiny_llm, connector={"num_queries": 2},
                           nonfinite_loss=policy)
    real_losses, calls = module.model.losses, {"n": 0}

    def losses(batch):
        calls["n"] += 1
        values = real_losses(batch)
        return {k: v * float("nan") for k, v in values.items()} if calls["n"] == 2 else values

    monkeypatch.setattr(module.model, "losses", losses)
    before = {k: v.clone() for k, v in module.model.connector.state_dict().items()}
    if policy == "stop":
        with pytest.raises(FloatingPointError, match="non-finite training loss"):
            _fit(module, root, steps=3)
    else:
        trainer = _fit(module, root, steps=3)
        assert "step skipped" in capsys.readouterr().out
        assert all(torch.isfinite(v).all() for v in module.model.connector.state_dict().values())
        assert trainer.callback_metrics["train/nonfinite_steps"].item() == 1.0
        assert any(not torch.equal(before[k], v) for k, v in module.model.connector.state_dict().items())
