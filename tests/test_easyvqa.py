"""easy-VQA datamodule: official package layout, deterministic subsets, captions, bad input."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from perceptlm.data import EasyVQADataModule, subset_indices
from perceptlm.data.easyvqa import caption_of, default_root, read_questions
from perceptlm.zoo import tiny_tokenizer


def _connected(**kwargs):
    dm = EasyVQADataModule(**kwargs)
    encoder = SimpleNamespace(preprocess=lambda image: torch.zeros(3, 8, 8))  # a model as connect reads it
    dm.connect(SimpleNamespace(tokenizer=tiny_tokenizer(), encoder=encoder, stop_token_ids=[]))
    return dm


def test_package_counts():
    root = default_root()
    assert len(read_questions(root / "train" / "questions.json")) == 38575
    assert len(read_questions(root / "test" / "questions.json")) == 9673
    assert len((root / "answers.txt").read_text().split()) == 13
    assert len(list((root / "train" / "images").glob("*.png"))) == 4000
    assert len(list((root / "test" / "images").glob("*.png"))) == 1000


def test_subsets_are_deterministic_and_validated():
    a = subset_indices(1000, 0.01, None, seed=3)
    assert a == subset_indices(1000, 0.01, None, seed=3) and len(a) == 10
    assert a != subset_indices(1000, 0.01, None, seed=4)
    assert subset_indices(1000, None, 7, seed=0) == sorted(subset_indices(1000, None, 7, seed=0))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
            subset_indices(10, bad, None, 0)


def test_fixed_test_subset_and_train_fraction():
    dm = _connected(fraction=0.01, seed=1, test_limit=1000)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.datasets["train"]) == 386  # ceil(0.01 * 38,575)
    assert len(dm.datasets["test"]) == 1000
    other = _connected(fraction=0.01, seed=2, test_limit=1000)
    other.setup("fit")
    other.setup("test")
    assert dm.subset_ids["test"] == other.subset_ids["test"]  # evaluation subset ignores the seed
    assert dm.subset_ids["train"] != other.subset_ids["train"]


def test_batches_are_tokenised_for_training_and_generation():
    dm = _connected(limit=8, batch_size=4, test_limit=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.input_ids.shape == batch.labels.shape and batch.media.shape == (4, 3, 8, 8)
    assert (batch.attention_mask[:, 0] == 1).all()  # right padding for training
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert (batch.prompt_mask[:, -1] == 1).all()  # left padding for generation
    assert all(len(r) == 1 for r in batch.references)


def test_captions_from_questions():
    assert caption_of([("what color is the shape?", "teal"), ("what shape is this?", "circle")]) == "teal circle"
    assert caption_of([("what is the blue shape?", "rectangle")]) == "blue rectangle"
    assert caption_of([("does the image not contain a red shape?", "no"), ("is there a triangle?", "yes")]) == "red triangle"
    assert caption_of([("is there a red shape?", "no")]) is None
    dm = _connected(task="caption", test_limit=None)
    dm.setup("test")
    captions = [s.targets[0] for s in dm.datasets["test"].samples]
    assert len(captions) == 852 and all(len(c.split()) == 2 for c in captions)  # of 1,000 images


def test_bad_annotations_name_file_and_record(tmp_path):
    bad = tmp_path / "questions.json"
    bad.write_text("[[\"q\", \"a\", 0], [\"q\", 3]]")
    with pytest.raises(ValueError, match=r"questions.json: record 1"):
        read_questions(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        read_questions(bad)


def test_missing_images_fail_before_training(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "questions.json").write_text(json.dumps([["what?", "red", 5], ["is it?", "no", 6]]))
    dm = _connected(data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"2 media files are missing, e.g. .*5.png"):
        dm.setup("fit")


def test_unconnected_datamodule_explains_itself():
    dm = EasyVQADataModule(limit=2)
    dm.setup("fit")
    with pytest.raises(RuntimeError, match="connect"):
        dm.train_dataloader()


def test_question_types_are_scored_separately():
    """Each test question carries its type; VQA scoring adds one accuracy per type (and the baselines'
    twins come from the same scoring)."""
    from perceptlm.data.easyvqa import question_type
    from perceptlm.evaluation.scoring import score_records

    samples = EasyVQADataModule(test_limit=None).load_samples("test")
    types = [s.extra["meta"]["question_type"] for s in samples]
    assert set(types) == {"yesno", "color", "shape"} and all(question_type(s.targets[0]) == t for s, t in zip(samples, types))
    assert types.count("yesno") > types.count("color") > 0
    with pytest.raises(ValueError, match="'maybe' is not yes/no"):
        question_type("maybe")
    records = [{"prediction": p, "blind_prediction": "no", "references": [r], "meta": {"question_type": t}}
               for p, r, t in (("red", "red", "color"), ("blue", "teal", "color"), ("yes", "no", "yesno"),
                               ("circle", "circle", "shape"))]
    metrics = score_records("vqa", records)
    assert metrics["accuracy"] == 0.5 and metrics["color_accuracy"] == 0.5 and metrics["shape_accuracy"] == 1.0
    assert metrics["yesno_accuracy"] == 0.0 and metrics["blind_yesno_accuracy"] == 1.0
    assert metrics["blind_color_accuracy"] == 0.0
