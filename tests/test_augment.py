"""``augment="depalm"``: DePALM's training augmentation. Images: random, seeded per (seed, epoch,
index), a squash resize at evaluation, the encoder's normalisation after it; ALBEF's ops equal
OpenCV's; AST audio: SpecAugment bands in training only; CLAP: nothing; video: one draw per clip;
the feature cache refuses it and keys the evaluation resize; ``"none"`` is the encoder's preprocess."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from perceptlm import zoo
from perceptlm.data import EasyVQADataModule, SynthAudioDataModule, SynthVideoDataModule, load_audio
from perceptlm.data import augment as A
from perceptlm.data.base import load_image
from perceptlm.data.feature_cache import FeatureCache
from perceptlm.zoo.tiny import tiny_hf_vision_encoder

CORNERS = {"tl": (250, 0, 0), "tr": (0, 250, 0), "bl": (0, 0, 250), "br": (250, 250, 0)}
MARK = 6  # corner markers of MARK x MARK pixels


def marked_image(width: int = 96, height: int = 40, shift: int = 0) -> Image.Image:
    """A non-square RGB image: a gradient with a distinct colour block in each corner."""
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([(xx * 2 + shift) % 200 + 30, (yy * 5) % 200 + 30, ((xx + yy) * 3) % 200 + 30], -1).astype(np.uint8)
    pixels[:MARK, :MARK], pixels[:MARK, -MARK:] = CORNERS["tl"], CORNERS["tr"]
    pixels[-MARK:, :MARK], pixels[-MARK:, -MARK:] = CORNERS["bl"], CORNERS["br"]
    return Image.fromarray(pixels)


def corners(pixels: np.ndarray) -> dict[str, tuple[int, ...]]:
    return {"tl": tuple(pixels[0, 0]), "tr": tuple(pixels[0, -1]), "bl": tuple(pixels[-1, 0]), "br": tuple(pixels[-1, -1])}


@pytest.fixture
def vqa_root(tmp_path):
    """An easy-VQA folder of marked non-square images: 3 train images x 2 questions, 2 test images."""
    root = tmp_path / "easy-vqa"
    for split, images in (("train", 3), ("test", 2)):
        (root / split / "images").mkdir(parents=True)
        questions = [[f"What color is shape {i}?", "red", i] for i in range(images) for _ in range(2)]
        (root / split / "questions.json").write_text(json.dumps(questions))
        for i in range(images):
            marked_image(shift=40 * i).save(root / split / "images" / f"{i}.png")
    return root


def connected(datamodule, encoder, tokenizer=None):
    datamodule.connect(SimpleNamespace(tokenizer=tokenizer or object(), encoder=encoder, stop_token_ids=[]))
    return datamodule


def image_datamodule(root, encoder, augment="depalm", tokenizer=None, **kwargs):
    dm = EasyVQADataModule(data_root=str(root), augment=augment, val_limit=4, test_limit=4, **kwargs)
    connected(dm, encoder, tokenizer)
    dm.setup("fit")
    return dm


def test_invalid_augment_names_the_valid_values():
    with pytest.raises(ValueError, match=r"augment='randaugment' is unknown; valid: \('none', 'depalm'\)"):
        EasyVQADataModule(augment="randaugment")


def test_none_is_the_encoders_preprocess_bit_for_bit(vqa_root, tiny_encoder):
    dm = image_datamodule(vqa_root, tiny_encoder, augment="none")
    for stage in ("train", "val"):
        assert dm.augmentation(stage) is None
        dataset = dm.datasets[stage]
        for index in range(len(dataset)):
            expected = tiny_encoder.preprocess(load_image(dataset.samples[index].media))
            assert torch.equal(dataset[index].media, expected)
    assert "augment" not in dm.media_config("val")  # "none" leaves the feature-cache key as it was


def test_train_augmentation_is_random_and_seeded_per_seed_epoch_index(vqa_root, tiny_encoder):
    dm, rerun = image_datamodule(vqa_root, tiny_encoder), image_datamodule(vqa_root, tiny_encoder)
    train = dm.datasets["train"]
    assert dm.augmentation("train").random and not dm.augmentation("val").random
    first = [train[i].media for i in range(len(train))]
    assert all(m.shape == (3, 32, 32) for m in first)  # the encoder's input size
    for i, media in enumerate(first):  # the same (seed, epoch, index): the same draw, in a fresh run too
        assert torch.equal(media, train[i].media) and torch.equal(media, rerun.datasets["train"][i].media)
        assert not torch.equal(media, tiny_encoder.preprocess(load_image(train.samples[i].media)))
    assert train.samples[0].media == train.samples[1].media  # one image, two indices: two draws
    assert not torch.equal(first[0], first[1])
    train.set_epoch(1)
    assert all(not torch.equal(first[i], train[i].media) for i in range(len(train)))
    train.set_epoch(0)
    assert torch.equal(first[2], train[2].media)
    other_seed = image_datamodule(vqa_root, tiny_encoder, seed=1).datasets["train"]
    assert not torch.equal(first[2], other_seed[2].media)


def test_train_media_are_the_encoders_normalisation_of_the_augmented_image(vqa_root, tiny_encoder):
    dm = image_datamodule(vqa_root, tiny_encoder)
    train, augmentation = dm.datasets["train"], dm.augmentation("train")
    for index in range(len(train)):
        generator = np.random.default_rng((dm.seed, 0, index, 1))
        augmented = augmentation.before(load_image(train.samples[index].media), generator)
        assert augmented.size == (32, 32) and augmented.mode == "RGB"
        pixels = torch.from_numpy(np.array(augmented, dtype=np.float32)).permute(2, 0, 1) / 255
        mean = torch.tensor(tiny_encoder.image_mean).view(3, 1, 1)
        std = torch.tensor(tiny_encoder.image_std).view(3, 1, 1)
        torch.testing.assert_close(train[index].media, (pixels - mean) / std, rtol=0, atol=1e-6)


def test_dataloader_workers_draw_what_the_main_process_draws(vqa_root, tiny_encoder, tiny_llm):
    batches = []
    for workers in (0, 2):
        dm = image_datamodule(vqa_root, tiny_encoder, batch_size=6, num_workers=workers, tokenizer=tiny_llm.tokenizer)
        batches.append(next(iter(dm.train_dataloader())))
    assert batches[0].ids == batches[1].ids and torch.equal(batches[0].media, batches[1].media)
    flat = batches[1].media.flatten(1)
    assert len({tuple(row.tolist()) for row in flat}) == 6  # six samples of three images: six different draws


def test_eval_is_a_squash_resize_to_224_without_crop():
    image = marked_image(300, 120)
    squashed = A.ImageAugmentation((224, 224), train=False).before(image, None)
    assert squashed.size == (224, 224)
    depalm = transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC, antialias=True)
    assert squashed.tobytes() == depalm(image).tobytes()  # DePALM's data_base.py evaluation resize
    assert corners(np.array(squashed)) == CORNERS  # every corner kept: nothing was cropped away
    trained = A.ImageAugmentation((224, 224), train=True).before(image, np.random.default_rng(0))
    assert trained.size == (224, 224)


def test_eval_media_through_the_datamodule_at_224(vqa_root):
    encoder = tiny_hf_vision_encoder("vit", image_size=224)
    dm = image_datamodule(vqa_root, encoder)
    val = dm.datasets["val"]
    media = val[0].media
    assert media.shape == (3, 224, 224) and torch.equal(media, val[0].media)
    mean = torch.tensor(encoder.image_mean).view(3, 1)
    std = torch.tensor(encoder.image_std).view(3, 1)
    for name, (y, x) in {"tl": (0, 0), "tr": (0, -1), "bl": (-1, 0), "br": (-1, -1)}.items():
        expected = (torch.tensor(CORNERS[name], dtype=torch.float32).view(3, 1) / 255 - mean) / std
        torch.testing.assert_close(media[:, y, x], expected[:, 0], rtol=0, atol=1e-5)
    squashed = load_image(val.samples[0].media).resize((224, 224), Image.Resampling.BICUBIC)
    assert torch.equal(media, encoder.preprocess(squashed))


def test_feature_cache_refuses_depalm_training(vqa_root, tmp_path, tiny_encoder):
    dm = EasyVQADataModule(data_root=str(vqa_root), augment="depalm", feature_cache=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"random augmentation .*augment='depalm'.*augment: none.*feature_cache: null"):
        connected(dm, tiny_encoder)
    assert dm.encoder is None
    connected(EasyVQADataModule(data_root=str(vqa_root), feature_cache=str(tmp_path / "cache")), tiny_encoder)


def test_the_eval_resize_is_applied_by_and_keys_the_cache(vqa_root, tmp_path, tiny_encoder, tiny_llm):
    cache = tmp_path / "cache"
    directories, tokens = {}, {}
    for augment in ("none", "depalm"):
        dm = image_datamodule(vqa_root, tiny_encoder, augment=augment, batch_size=4, tokenizer=tiny_llm.tokenizer)
        dm.feature_cache = str(cache)  # an evaluation-only cache (connect refuses it for depalm training)
        batch = next(iter(dm.val_dataloader()))
        live = torch.stack([dm.datasets["val"][i].media for i in range(len(batch.ids))])
        with torch.no_grad():
            torch.testing.assert_close(batch.media.tokens, tiny_encoder(live).tokens, rtol=0, atol=1e-5)
        directories[augment] = FeatureCache.for_encoder(cache, tiny_encoder, dm.media_config("val")).directory
        tokens[augment] = batch.media.tokens
    assert directories["none"] != directories["depalm"] and all(d.is_dir() for d in directories.values())
    assert not torch.allclose(tokens["none"], tokens["depalm"])


# -- ALBEF's RandomAugment ops ---------------------------------------------------------------------
def golden_image() -> np.ndarray:
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:37, 0:53]
    image[:20] = np.stack([(xx * 5) % 256, (yy * 7) % 256, (xx + yy) * 2], -1)[:20].astype(np.uint8)
    return image


# SHA-256 prefixes of DePALM's (ALBEF's) OpenCV implementation's outputs (opencv-python 4.10.0) on
# golden_image(), level 7 of 10 (factor 1.36, shear 0.21, 7 px, 21 degrees), grey fill.
OPENCV_DIGESTS = {
    "autocontrast": "c1b5e03e87dc77b9249bf98a5dc7df18",
    "equalize": "bf579d6f2c28aac028f325f88b14099b",
    "brightness": "9c4016ba92e5ac27e58d29887eb31db9",
    "sharpness": "496594021c8da37b21323a29b529d2be",
    "shear_x": "c83c78f0b2565e1bdbb98e7106ee0407",
    "shear_y": "52e8211329b43608d8732ff93577771a",
    "translate_x": "ff9dde5403da6f182772c9df0c239727",
    "translate_y": "f4605f1504e0be3074926c223f16551f",
    "rotate": "4c0dbe29ef5d3c7844afbacc93bbd4d6",
    "rotate_negative": "8031562a0fd621b8987e6eed2687cb50",
}


def test_randaugment_ops_equal_depalms_opencv_ops_bit_for_bit():
    image, grey, factor = golden_image(), (128, 128, 128), 7 / 10 * 1.8 + 0.1
    outputs = {
        "autocontrast": A.autocontrast(image // 2 + 40),
        "equalize": A.equalize(image),
        "brightness": A.brightness(image, factor),
        "sharpness": A.sharpness(image, factor),
        "shear_x": A.shear_x(image, -0.21, grey),
        "shear_y": A.shear_y(image, 0.21, grey),
        "translate_x": A.translate_x(image, 7.0, grey),
        "translate_y": A.translate_y(image, -7.0, grey),
        "rotate": A.rotate(image, 21.0, grey),
        "rotate_negative": A.rotate(image, -21.0, grey),
    }
    digests = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:32] for k, v in outputs.items()}
    assert digests == OPENCV_DIGESTS


def test_randaugment_draws_two_ops_of_depalms_list_each_with_probability_half():
    augment, image = A.RandomAugment(2, 7), Image.fromarray(golden_image())
    assert augment.ops == ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
                           "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
    unchanged = sum(np.array_equal(np.array(augment(image, np.random.default_rng(s))), golden_image())
                    for s in range(200))
    # unchanged when both ops are skipped (1/4) or are Identity; about 0.33 of the draws
    assert 40 <= unchanged <= 95


# -- audio -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synth-audio"))


def audio_datamodule(root, encoder, augment="depalm"):
    dm = SynthAudioDataModule(data_root=root, num_train=3, num_test=2, min_seconds=2.0, max_seconds=3.0,
                              val_limit=2, augment=augment)
    connected(dm, encoder)
    dm.setup("fit")
    return dm


def masked_bands(features: torch.Tensor, reference: torch.Tensor, fill: float) -> tuple[list[int], list[int]]:
    """Mel bins and frames set to ``fill`` in whole columns / rows (leaving out those already all
    ``fill``: padding frames); fails on any change outside them."""
    masked, was_fill = features == fill, reference == fill
    bins = [b for b in range(features.shape[1]) if bool(masked[:, b].all()) and not bool(was_fill[:, b].all())]
    frames = [f for f in range(features.shape[0]) if bool(masked[f, :].all()) and not bool(was_fill[f, :].all())]
    covered = torch.zeros_like(masked)
    covered[:, bins], covered[frames, :] = True, True
    assert torch.equal(features[~covered], reference[~covered])  # nothing changed outside the bands
    for band in (bins, frames):
        assert band == list(range(band[0], band[0] + len(band))) if band else True  # contiguous
    return bins, frames


def test_specaugment_masks_ast_features_in_training_only(audio_root):
    encoder = zoo.load_encoder("test-tiny-ast")
    dm = audio_datamodule(audio_root, encoder)
    fill = A.ast_fill_value(encoder)
    assert fill == pytest.approx(4.2677393 / (2 * 4.5689974), rel=1e-6)  # DePALM's 0 after AST's normalisation
    train = dm.datasets["train"]
    widths = []
    for epoch in range(3):
        train.set_epoch(epoch)
        for index in range(len(train)):
            media = train[index].media
            reference = encoder.preprocess(load_audio(train.samples[index].media))
            assert media["num_frames"] == reference["num_frames"]
            assert torch.equal(media["input_features"], train[index].media["input_features"])  # seeded
            bins, frames = masked_bands(media["input_features"], reference["input_features"], fill)
            assert len(bins) < A.FREQ_MASK and len(frames) < A.TIME_MASK
            widths.append((len(bins), len(frames)))
    assert any(b > 0 and f > 0 for b, f in widths)  # both kinds of band occur
    assert len(set(widths)) > 3  # and change with the epoch and the index
    val = dm.datasets["val"]
    assert dm.augmentation("val") is None
    for index in range(len(val)):
        reference = encoder.preprocess(load_audio(val.samples[index].media))
        assert torch.equal(val[index].media["input_features"], reference["input_features"])


def test_clap_gets_no_augmentation(audio_root):
    encoder = zoo.load_encoder("test-tiny-clap")
    dm = audio_datamodule(audio_root, encoder)
    assert all(dm.augmentation(stage) is None for stage in dm.splits)
    sample = dm.datasets["train"].samples[0]
    expected = encoder.preprocess(load_audio(sample.media))["input_features"]
    assert torch.equal(dm.datasets["train"][0].media["input_features"], expected)


# -- video -----------------------------------------------------------------------------------------
def test_video_clip_shares_one_draw_and_evaluation_squashes():
    frames = np.repeat(np.array(marked_image(96, 40))[None], 4, axis=0)  # four identical frames
    out = A.VideoAugmentation((32, 32), train=True).before(frames, np.random.default_rng(3))
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[0], frame) for frame in out[1:])  # one crop / flip / RandAugment per clip
    again = A.VideoAugmentation((32, 32), train=True).before(frames, np.random.default_rng(3))
    assert np.array_equal(out, again)
    squashed = A.VideoAugmentation((224, 224), train=False).before(frames, None)
    assert squashed.shape == (4, 224, 224, 3) and corners(squashed[2]) == CORNERS


def test_video_datamodule_augments_training_clips_per_epoch(tmp_path):
    encoder = zoo.load_encoder("test-tiny-video")
    dm = SynthVideoDataModule(data_root=str(tmp_path / "clips"), num_train=2, num_test=1, clip_frames=8,
                              frame_size=64, train_frame_sampling="uniform", augment="depalm")
    dm.prepare_data()
    connected(dm, encoder)
    dm.setup("fit")
    train = dm.datasets["train"]
    first = train[0].media
    assert first.shape == (4, 3, 32, 32) and torch.equal(first, train[0].media)
    plain = encoder.preprocess(dm.load_media(train.samples[0].media, True, None))
    assert not torch.equal(first, plain)
    train.set_epoch(1)
    assert not torch.equal(first, train[0].media)  # the frames are the same (uniform): the augmentation differs
    val = dm.datasets["val"]
    squashed = A.VideoAugmentation((32, 32), train=False).before(dm.load_media(val.samples[0].media), None)
    assert torch.equal(val[0].media, encoder.preprocess(squashed))
