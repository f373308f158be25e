"""Video: frame sampling, decoding only the sampled frames, video encoders (per-frame wrapper and
TimeSformer), MSR-VTT in its official layout, the synthetic set, and both through the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from perceptlm import zoo
from perceptlm.cli import cli
from perceptlm.data import MSRVTTDataModule, SynthVideoDataModule, load_video, sample_frame_indices
from perceptlm.data.base import EpochShuffleSampler
from perceptlm.data.synthetic import write_mp4
from perceptlm.encoders.video import TimeSformerEncoder, VideoFrameEncoder, frame_major
from perceptlm.zoo import tiny_tokenizer

STEP = 10  # frame k of a test clip is uniformly grey with intensity STEP * k
CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"


def write_grey_clip(path: Path, num_frames: int, size: int = 32) -> Path:
    frames = np.stack([np.full((size, size, 3), STEP * k, np.uint8) for k in range(num_frames)])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, frames)
    return path


def frame_numbers(frames) -> list[int]:
    """Which frames of a grey clip were decoded, from their intensity (exact to +-4 after H.264)."""
    means = np.asarray(frames, dtype=np.float64).reshape(len(frames), -1).mean(1)
    assert np.all(np.abs(means / STEP - np.round(means / STEP)) * STEP <= 4), means
    return [int(round(m / STEP)) for m in means]


# -- frame sampling -------------------------------------------------------------------------------
def test_eval_takes_segment_centres():
    assert sample_frame_indices(16, 4, train=False) == [2, 6, 10, 14]  # segments of 4 frames
    assert sample_frame_indices(10, 3, train=False) == [1, 4, 8]  # segments [0,3) [3,6) [6,10)
    assert sample_frame_indices(5, 5, train=False) == [0, 1, 2, 3, 4]


def test_train_draws_one_frame_per_segment_seeded():
    draws = [sample_frame_indices(40, 4, True, np.random.default_rng(seed)) for seed in range(20)]
    for indices in draws:
        assert [i // 10 for i in indices] == [0, 1, 2, 3]  # one frame inside each segment of 10
    assert draws[0] == sample_frame_indices(40, 4, True, np.random.default_rng(0))  # reproducible
    assert len({tuple(d) for d in draws}) > 15  # seeds differ
    assert len({d[0] for d in draws}) > 5  # the offset within a segment varies
    torch_draw = sample_frame_indices(40, 4, True, torch.Generator().manual_seed(1))
    assert torch_draw == sample_frame_indices(40, 4, True, torch.Generator().manual_seed(1))
    assert [i // 10 for i in torch_draw] == [0, 1, 2, 3]
    with pytest.raises(TypeError, match="seeded"):
        sample_frame_indices(40, 4, True, None)


def test_short_video_repeats_frames_and_empty_video_fails():
    for train in (False, True):
        indices = sample_frame_indices(3, 8, train, np.random.default_rng(0))
        assert len(indices) == 8 and indices == sorted(indices) and set(indices) == {0, 1, 2}
    with pytest.raises(ValueError, match="0 frames"):
        sample_frame_indices(0, 4, False)


# -- decoding ---------------------------------------------------------------------------------------
def test_load_video_decodes_exactly_the_sampled_frames(tmp_path, monkeypatch):
    import decord

    clip = write_grey_clip(tmp_path / "grey.mp4", 20)
    calls: list[list[int]] = []

    class Spy(decord.VideoReader):
        def get_batch(self, indices):
            calls.append(list(indices))
            return super().get_batch(indices)

        def __getitem__(self, index):
            raise AssertionError("frames must be read with one get_batch of the sampled indices")

    monkeypatch.setattr(decord, "VideoReader", Spy)
    frames = load_video(clip, 4, train=False)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    assert frame_numbers(frames) == [2, 7, 12, 17] and calls == [[2, 7, 12, 17]]
    frames = load_video(clip, 4, train=True, generator=np.random.default_rng(5))
    expected = sample_frame_indices(20, 4, True, np.random.default_rng(5))
    assert frame_numbers(frames) == expected and calls[-1] == expected
    assert frame_numbers(load_video(write_grey_clip(tmp_path / "short.mp4", 3), 6)) == [0, 0, 1, 1, 2, 2]


def test_bad_videos_raise_with_their_path(tmp_path, monkeypatch):
    import decord

    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_video(tmp_path / "missing.mp4", 4)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video" * 50)
    with pytest.raises(RuntimeError, match="corrupt.mp4"):
        load_video(corrupt, 4)
    good = write_grey_clip(tmp_path / "empty.mp4", 4)

    class Empty(decord.VideoReader):
        def __len__(self):
            return 0

    monkeypatch.setattr(decord, "VideoReader", Empty)
    with pytest.raises(ValueError, match="empty.mp4: the video has 0 frames"):
        load_video(good, 4)


# -- VideoFrameEncoder ------------------------------------------------------------------------------
@pytest.mark.parametrize("temporal", ["mean", "concat"])
@pytest.mark.parametrize("tokens", ["all", "cls", "patches"])
@pytest.mark.parametrize("layers", [1, 2])
def test_frame_encoder_shapes_and_values(tiny_encoder, temporal, tokens, layers):
    frames = 3
    video = VideoFrameEncoder(tiny_encoder, num_frames=frames, temporal=temporal, layers=layers, tokens=tokens)
    assert video.modality == "video" and video.num_frames == frames and video.name == "video:test-tiny-vit"
    media = torch.randn(2, frames, 3, 32, 32)
    features = video(media)
    patches = 16 if temporal == "mean" else frames * 16  # 4x4 grid per frame
    expected = {"all": patches + 1, "cls": 1, "patches": patches}[tokens]
    assert features.tokens.shape == (2, layers, expected, 64) and video.num_tokens == expected
    assert features.mask.shape == (2, expected) and features.mask.all()
    assert features.cls_index == (None if tokens == "patches" else 0)
    assert features.grid == ((4, 4) if temporal == "mean" and tokens != "cls" else None)
    blank = video.blank(2, like=media)
    assert blank.tokens.shape == features.tokens.shape and blank.grid == features.grid
    assert blank.cls_index == features.cls_index and not blank.tokens.any()

    image = tiny_encoder.with_selection(layers=layers, tokens="all")  # same weights, per frame
    per_frame = image(media.flatten(0, 1)).tokens.unflatten(0, (2, frames))  # [B, T, L, 17, D]
    if temporal == "mean":
        reference = per_frame.mean(1)
    else:
        cls = per_frame[:, :, :, :1].mean(1)
        reference = torch.cat([cls, per_frame[:, :, :, 1:].permute(0, 2, 1, 3, 4).flatten(2, 3)], 2)
    reference = {"all": reference, "cls": reference[:, :, :1], "patches": reference[:, :, 1:]}[tokens]
    torch.testing.assert_close(features.tokens, reference)


def test_frame_encoder_final_norm_per_frame_and_views(tiny_encoder):
    video = zoo.load_encoder("test-tiny-video", layers=[1], final_norm=False)
    assert video.num_frames == 4 and video.temporal == "mean"
    media = torch.randn(1, 4, 3, 32, 32)
    normed = video.with_selection(final_norm=True)(media).tokens
    image = tiny_encoder.with_selection(layers=[1], final_norm=True)
    torch.testing.assert_close(normed[0, 0], image(media[0]).tokens[:, 0].mean(0))  # norm, then mean
    assert not torch.allclose(normed, video(media).tokens)
    view = video.with_selection(num_frames=2, temporal="concat", tokens="patches")
    assert view.num_raw_tokens == 1 + 2 * 16 and view.num_tokens == 32 and view.grid is None
    assert video.num_frames == 4 and video.num_raw_tokens == 17  # the original is unchanged
    assert view.image_encoder is video.image_encoder
    assert view(torch.randn(1, 2, 3, 32, 32)).tokens.shape == (1, 1, 32, 64)
    clip = np.random.default_rng(0).integers(0, 256, (4, 48, 40, 3), dtype=np.uint8)
    batch = video.stack_media([video.preprocess(clip), video.preprocess(torch.from_numpy(clip))])
    assert batch.shape == (2, 4, 3, 32, 32)
    torch.testing.assert_close(batch[0, 1], tiny_encoder.preprocess(clip[1]))
    with pytest.raises(ValueError, match="num_frames=4"):
        video.preprocess(clip[:3])
    with pytest.raises(ValueError, match=r"\[B, 4, 3, H, W\]"):
        video(torch.randn(1, 3, 3, 32, 32))
    named = zoo.load_encoder("video:test-tiny-vit", num_frames=3, temporal="concat", layers=2, tokens="cls")
    assert named.name == "video:test-tiny-vit" and named.layer_indices == [2, 3] and named.num_raw_tokens == 49
    with pytest.raises(ValueError, match="valid"):
        zoo.load_encoder("video:test-tiny-vit", temporal="max")
    with pytest.raises(ValueError, match="image PerceptualEncoder"):
        VideoFrameEncoder(zoo.load_encoder("test-tiny-timesformer"))
    assert not any(p.requires_grad for p in video.parameters())


@pytest.mark.slow
def test_video_over_packaged_efficientnet():
    video = zoo.load_encoder("video:efficientnet-lite0", num_frames=2, temporal="mean", layers=1, tokens="all")
    assert video.num_raw_tokens == 50 and video.grid == (7, 7) and video.embed_dim == 1280
    clip = np.random.default_rng(0).integers(0, 256, (2, 120, 160, 3), dtype=np.uint8)
    media = video.stack_media([video.preprocess(clip)])
    assert media.shape == (1, 2, 3, 224, 224) and video(media).tokens.shape == (1, 1, 50, 1280)


# -- TimeSformer -------------------------------------------------------------------------------------
def test_timesformer_token_order_and_final_norm():
    encoder = zoo.load_encoder("test-tiny-timesformer", layers=1)
    model, frames = encoder.model, 4
    media = torch.randn(2, frames, 3, 32, 32)
    with torch.no_grad():
        embedded = model.embeddings(media)  # [B, 1 + P*T, D], patch-major
        patch = model.embeddings.patch_embeddings(media)[0].unflatten(0, (2, frames))  # [B, T, P, D]
        expected = (patch + model.embeddings.position_embeddings[:, None, 1:]
                    + model.embeddings.time_embeddings[0][None, :, None])
        torch.testing.assert_close(frame_major(embedded, frames)[:, :, 1:], expected)
        last = model(pixel_values=media).last_hidden_state
    tokens = encoder(media).tokens[:, 0]
    assert tokens.shape == (2, 1 + frames * 16, 64)
    # the last block with the final norm is the model's output, reordered frame-major
    torch.testing.assert_close(tokens, torch.cat([last[:, :1], frame_major(last, frames)[:, :, 1:].flatten(1, 2)], 1))


@pytest.fixture(scope="module")
def tiny_timesformer():
    return zoo.load_encoder("test-tiny-timesformer")


@pytest.mark.parametrize("temporal", ["concat", "mean"])
@pytest.mark.parametrize("tokens", ["all", "cls", "patches"])
def test_timesformer_selection(tiny_timesformer, temporal, tokens):
    encoder = tiny_timesformer.with_selection(temporal=temporal, layers=2, tokens=tokens)
    assert isinstance(encoder, TimeSformerEncoder) and encoder.layer_indices == [2, 3]
    assert encoder.modality == "video" and encoder.num_frames == 4 and encoder.num_layers == 4
    patches = 16 if temporal == "mean" else 64
    expected = {"all": patches + 1, "cls": 1, "patches": patches}[tokens]
    clip = np.random.default_rng(1).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    media = encoder.stack_media([encoder.preprocess(clip)] * 2)
    features = encoder(media)
    assert media.shape == (2, 4, 3, 32, 32) and features.tokens.shape == (2, 2, expected, 64)
    assert features.grid == ((4, 4) if temporal == "mean" and tokens != "cls" else None)
    assert encoder.blank(2, like=media).tokens.shape == features.tokens.shape
    torch.testing.assert_close(features.tokens[0], features.tokens[1])
    raw = encoder.with_selection(tokens="all", temporal="concat", final_norm=False)(media).tokens
    assert raw.shape == (2, 2, 65, 64) and not torch.allclose(raw[:, -1, :1], features.tokens[:, -1, :1])
    with pytest.raises(ValueError, match="reads exactly 4 frames"):
        encoder.with_selection(num_frames=8)


def test_timesformer_more_frames_resize_the_time_embeddings_as_timesformer_does():
    """8 frames on a 4-frame model: each time embedding used twice (nearest), the same outputs as
    transformers' own interpolation at run time; 16 on the base config: 1 + 16 x 196 tokens."""
    import copy

    from transformers import TimesformerConfig, TimesformerModel

    reference = zoo.load_encoder("test-tiny-timesformer").model
    encoder = zoo.load_encoder("test-tiny-timesformer", num_frames=8, layers=4)
    assert encoder.num_frames == 8 and encoder.num_raw_tokens == 1 + 8 * 16
    time = encoder.model.embeddings.time_embeddings
    assert time.shape == (1, 8, 64) and not time.requires_grad
    torch.testing.assert_close(time, reference.embeddings.time_embeddings.repeat_interleave(2, dim=1))
    runtime = copy.deepcopy(reference)  # transformers interpolates when the frame count differs from its embeddings
    runtime.config.num_frames = 8
    media = torch.randn(2, 8, 3, 32, 32)
    with torch.no_grad():
        expected = runtime(pixel_values=media, output_hidden_states=True).hidden_states
    ours = encoder.with_selection(token_order="patch", final_norm=False)(media).tokens
    torch.testing.assert_close(ours, torch.stack(expected[1:], 1))
    assert encoder(media).tokens.shape == (2, 4, 129, 64)
    with pytest.raises(ValueError, match="load it with num_frames=4"):
        encoder.with_selection(num_frames=4)
    with torch.device("meta"):
        base = TimesformerModel(TimesformerConfig())  # the k400 checkpoints' geometry: 8 frames, 224 px, 16 px
    assert base.config.num_frames == 8
    depalm = TimeSformerEncoder(base, num_frames=16, final_norm=False)
    assert depalm.num_raw_tokens == 1 + 16 * 196 and depalm.num_layers == 12 and depalm.embed_dim == 768
    assert base.embeddings.time_embeddings.shape == (1, 16, 768) and base.config.num_frames == 16
    assert depalm.with_selection(temporal="reshape_mean").num_raw_tokens == 197


def test_timesformer_final_norm_is_the_model_layernorm_per_block(tiny_timesformer):
    encoder = tiny_timesformer.with_selection(layers=[1, 3], token_order="patch")
    media = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        blocks = encoder.model(pixel_values=media, output_hidden_states=True).hidden_states
    normed, raw = encoder(media).tokens, encoder.with_selection(final_norm=False)(media).tokens
    torch.testing.assert_close(raw, torch.stack([blocks[2], blocks[4]], 1))
    with torch.no_grad():
        torch.testing.assert_close(normed, encoder.model.layernorm(raw))
    assert not torch.allclose(normed, raw)


def test_timesformer_patch_order_and_reshape_mean():
    encoder = zoo.load_encoder("test-tiny-timesformer", layers=1)
    media = torch.randn(2, 4, 3, 32, 32)
    frame = encoder(media).tokens[:, 0]
    patch = encoder.with_selection(token_order="patch")(media).tokens[:, 0]
    # patch-major: patch p of frame t at 1 + p*T + t; frame-major: at 1 + t*P + p
    torch.testing.assert_close(patch[:, 1:].unflatten(1, (16, 4)).transpose(1, 2), frame[:, 1:].unflatten(1, (4, 16)))
    torch.testing.assert_close(patch[:, 0], frame[:, 0])
    # DePALM's declared layout of the patch-major sequence: tokens_grid rows times the frames
    assert encoder.grid is None and encoder.with_selection(token_order="patch").grid == (4 * 4, 4)
    reshaped = encoder.with_selection(temporal="reshape_mean")
    assert reshaped.grid == (4, 4) and reshaped.num_raw_tokens == 17
    tokens = reshaped(media).tokens[:, 0]
    # the patch-major sequence cut into T runs of P, averaged (not patch j over time)
    torch.testing.assert_close(tokens[:, 1:], patch[:, 1:].reshape(2, 4, 16, 64).mean(1))
    torch.testing.assert_close(tokens[:, 0], patch[:, 0])
    true_mean = encoder.with_selection(temporal="mean")(media).tokens[:, 0]
    torch.testing.assert_close(true_mean[:, 1:], frame[:, 1:].unflatten(1, (4, 16)).mean(1))
    assert not torch.allclose(true_mean, tokens)
    with pytest.raises(ValueError, match="token_order='time' is unknown"):
        encoder.with_selection(token_order="time")


def test_timesformer_preprocessing_overrides(tmp_path):
    encoder = zoo.load_encoder("test-tiny-timesformer", image_mean=[0.48145466, 0.4578275, 0.40821073],
                               image_std=[0.26862954, 0.26130258, 0.27577711], resample="bicubic")
    assert encoder.resample == "bicubic" and encoder.image_mean[0] == 0.48145466
    clip = np.full((4, 40, 40, 3), 255, dtype=np.uint8)
    torch.testing.assert_close(encoder.preprocess(clip)[:, 0], torch.full((4, 32, 32), (1 - 0.48145466) / 0.26862954))


def test_timesformer_hub_ids_load_offline_only():
    with pytest.raises(ValueError, match="local Hugging Face cache"):
        zoo.load_encoder("timesformer:no-such-org/no-such-timesformer")


# -- datasets ----------------------------------------------------------------------------------------
MSRVTT_SPLITS = {"video0": "train", "video1": "train", "video2": "validate", "video3": "test", "video4": "test"}


def make_msrvtt(root: Path, lists: bool = True) -> Path:
    """A tiny MSR-VTT in the official layout: grey 20-frame clips, MSRVTT_data.json and the csvs."""
    videos = [{"category": 0, "url": f"https://example.com/{v}", "video_id": v, "start time": 1.0,
               "end time": 3.0, "split": s, "id": i} for i, (v, s) in enumerate(MSRVTT_SPLITS.items())]
    sentences = [{"caption": f"clip {v[-1]} caption {k}", "video_id": v, "sen_id": 3 * i + k}
                 for i, v in enumerate(MSRVTT_SPLITS) for k in range(3)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": videos, "sentences": sentences}))
    for video in MSRVTT_SPLITS:
        write_grey_clip(root / "videos" / "all" / f"{video}.mp4", 20)
    if lists:
        with open(root / "MSRVTT_train.7k.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerows([["", "video_id"], [0, "video0"], [1, "video1"], [2, "video2"]])
        with open(root / "MSRVTT_JSFUSION_test.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["key", "vid_key", "video_id", "sentence"])
            writer.writerows([["ret0", "msr4", "video4", "a clip"], ["ret1", "msr3", "video3", "another clip"]])
    return root


@pytest.fixture(scope="module")
def msrvtt_root(tmp_path_factory):
    return make_msrvtt(tmp_path_factory.mktemp("msrvtt"))


def _model(preprocess, num_frames=None):
    """A model as ``connect`` reads it: tokenizer, encoder (preprocess, frame count), stop tokens."""
    encoder = SimpleNamespace(preprocess=preprocess, num_frames=num_frames)
    return SimpleNamespace(tokenizer=tiny_tokenizer(), encoder=encoder, stop_token_ids=[])


def _connected(dm, num_frames=4):
    dm.connect(_model(lambda frames: torch.from_numpy(frames), num_frames))
    return dm


def test_msrvtt_splits_and_references(msrvtt_root, tmp_path):
    dm = MSRVTTDataModule(data_root=str(msrvtt_root))
    train, test = dm.load_samples("train"), dm.load_samples("test")
    assert [s.id for s in train] == ["video0", "video1", "video2"]  # the 7k list (with a 'validate' video)
    assert [s.id for s in test] == ["video4", "video3"]  # 1k-A, csv order
    assert test[0].targets == ["clip 4 caption 0", "clip 4 caption 1", "clip 4 caption 2"]
    assert test[0].media == msrvtt_root / "videos" / "all" / "video4.mp4" and test[0].prompt == ""
    fallback = make_msrvtt(tmp_path / "official", lists=False)
    dm = MSRVTTDataModule(data_root=str(fallback))
    assert [s.id for s in dm.load_samples("train")] == ["video0", "video1"]
    assert [s.id for s in dm.load_samples("test")] == ["video3", "video4"]
    with pytest.raises(ValueError, match="num_frames"):
        dm.connect(_model(lambda frames: frames))  # an image encoder gives no frame count


def test_msrvtt_bad_annotations_name_file_and_record(msrvtt_root, tmp_path):
    data = json.loads((msrvtt_root / "MSRVTT_data.json").read_text())
    cases = [
        ("{not json", "invalid JSON"),
        (json.dumps({"videos": data["videos"]}), "'videos' and 'sentences'"),
        (json.dumps({**data, "sentences": data["sentences"][:1] + [{"caption": " ", "video_id": "video0",
                                                                     "sen_id": 9}]}),
         r"sentences\[1\] \(sen_id 9\) has an empty caption"),
        (json.dumps({**data, "sentences": [{"caption": "x", "video_id": "video99", "sen_id": 0}]}),
         r"sentences\[0\] names video_id 'video99'"),
        (json.dumps({**data, "videos": data["videos"] + [{"video_id": "video9", "split": "dev"}]}),
         r"videos\[5\] \(video9\) has split 'dev'"),
    ]
    for text, message in cases:
        root = tmp_path / "bad"
        root.mkdir(exist_ok=True)
        (root / "MSRVTT_data.json").write_text(text)
        with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
            MSRVTTDataModule(data_root=str(root)).load_samples("train")
        assert "MSRVTT_data.json" in str(error.value)
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr7,video7,a clip\n")
    with pytest.raises(ValueError, match="MSRVTT_JSFUSION_test.csv: line 2 names video_id 'video7'"):
        MSRVTTDataModule(data_root=str(root)).load_samples("test")
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr4,video4,a clip\n")
    dm = _connected(MSRVTTDataModule(data_root=str(root)))  # csv and annotation valid, clips absent
    with pytest.raises(FileNotFoundError, match="video4.mp4"):
        dm.setup("test")


def test_train_frames_are_seeded_per_epoch_and_eval_frames_fixed(msrvtt_root):
    dm = _connected(MSRVTTDataModule(data_root=str(msrvtt_root), seed=3))
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert dm.num_frames == 4 and train.train and not val.train
    epoch0 = [frame_numbers(train[i].media) for i in range(len(train))]
    assert epoch0 == [frame_numbers(train[i].media) for i in range(len(train))]  # reproducible
    for indices in epoch0:
        assert [k // 5 for k in indices] == [0, 1, 2, 3]  # one frame per segment of 5
    sampler = EpochShuffleSampler(len(train), 3, train)
    sampler.set_epoch(1)  # Lightning's per-epoch call reaches the dataset
    assert train.epoch == 1
    epoch1 = [frame_numbers(train[i].media) for i in range(len(train))]
    assert epoch1 != epoch0
    assert all(frame_numbers(val[i].media) == [2, 7, 12, 17] for i in range(len(val)))  # centres
    other = _connected(MSRVTTDataModule(data_root=str(msrvtt_root), seed=4))
    other.setup("fit")
    assert [frame_numbers(other.datasets["train"][i].media) for i in range(len(train))] != epoch0
    uniform = _connected(MSRVTTDataModule(data_root=str(msrvtt_root), train_frame_sampling="uniform"))
    uniform.setup("fit")
    assert all(frame_numbers(s.media) == [2, 7, 12, 17] for s in uniform.datasets["train"])
    with pytest.raises(ValueError, match="valid: \\('random', 'uniform'\\)"):
        MSRVTTDataModule(data_root=str(msrvtt_root), train_frame_sampling="dense")


def test_corrupt_clip_becomes_a_skipped_sample(tmp_path):
    root = make_msrvtt(tmp_path / "msrvtt")
    (root / "videos" / "all" / "video3.mp4").write_bytes(b"\x00" * 1000)
    dm = _connected(MSRVTTDataModule(data_root=str(root)))
    dm.setup("test")
    good, bad = dm.datasets["test"][0], dm.datasets["test"][1]
    assert good.media is not None and bad.media is None
    assert "video3.mp4" in bad.extra["skipped"] and "RuntimeError" in bad.extra["skipped"]


def test_synth_video_is_deterministic_idempotent_and_captioned(tmp_path):
    kwargs = dict(data_root=str(tmp_path), num_train=6, num_test=3, clip_frames=8, frame_size=32)
    dm = SynthVideoDataModule(**kwargs)
    samples = dm.load_samples("train")
    assert len(samples) == 6 and len(dm.load_samples("test")) == 3
    folders = list(tmp_path.glob("v1-*"))
    assert len(folders) == 1 and not list(tmp_path.glob(".staging-*"))
    stamp = samples[0].media.stat().st_mtime_ns
    again = SynthVideoDataModule(**kwargs).load_samples("train")  # reused, not regenerated
    assert [s.targets for s in again] == [s.targets for s in samples] and samples[0].media.stat().st_mtime_ns == stamp
    records = json.loads((folders[0] / "train.json").read_text())
    for sample, record in zip(samples, records):
        words = sample.targets[0].split()
        assert words[:3] == ["a", record["color"], record["shape"]] and words[3] == "moves"
        assert words[-1] == record["direction"]
    clip = load_video(samples[0].media, 8)
    assert clip.shape == (8, 32, 32, 3)
    background = np.array([30, 30, 30])
    centres = []
    for frame in clip:  # the shape's centre of mass moves in the captioned direction
        ys, xs = np.nonzero(np.abs(frame.astype(int) - background).sum(-1) > 60)
        centres.append((xs.mean(), ys.mean()))
    dx, dy = np.subtract(centres[-1], centres[0])
    direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    assert direction == records[0]["direction"]
    (folders[0] / "manifest.json").unlink()  # incomplete set: regenerated in place
    assert len(SynthVideoDataModule(**kwargs).load_samples("train")) == 6
    assert (folders[0] / "manifest.json").is_file()


# -- the real CLI --------------------------------------------------------------------------------------
def _cli_args(run_dir: Path, data_config: str, *extra: str) -> list[str]:
    return [
        "--config", str(CONFIGS / "mechanisms" / "depalm-qp-l0.yaml"),
        "--config", str(CONFIGS / "data" / data_config),
        "--config", str(CONFIGS / "trainer" / "cpu.yaml"),
        "--model.init_args.encoder", "test-tiny-video",
        "--model.init_args.llm", "test-tiny-llama",
        "--model.init_args.connector", '{"width": 64, "num_queries": 4}',
        "--model.init_args.max_new_tokens", "6",
        "--model.init_args.num_beams", "1",
        "--data.init_args.batch_size", "2",
        "--data.init_args.eval_batch_size", "2",
        "--data.init_args.num_workers", "0",
        "--trainer.max_steps", "2",
        "--trainer.limit_val_batches", "0",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir),
        *extra,
    ]


def _fit_and_validate(run_dir: Path, data_config: str, *extra: str) -> None:
    fitted = cli(["fit", *_cli_args(run_dir, data_config, *extra), "--trainer.logger", "false"])  # W&B: validate
    assert fitted.datamodule.num_frames == 4 == fitted.model.model.encoder.num_frames  # from the model, once
    assert fitted.trainer.global_step == 2
    checkpoints = list(run_dir.rglob("*.ckpt"))
    assert checkpoints
    cli(["validate", *_cli_args(run_dir, data_config, *extra), "--trainer.limit_val_batches", "1.0",
         "--ckpt_path", str(checkpoints[0])])
    tables = list(run_dir.glob("wandb/offline-run-*/files/media/table/val/predictions*.table.json"))
    assert tables, "the validation predictions table is logged to W&B"
    table = json.loads(tables[0].read_text())
    assert table["data"] and not str(table["data"][0][1]).endswith(".mp4")  # a frame strip, not a path
    strips = list(run_dir.glob("wandb/offline-run-*/files/media/images/val/examples*.png"))
    assert strips and Image.open(strips[0]).size == (4 * 32, 32)  # 4 frames side by side


def test_cli_msrvtt_fit_and_validate(msrvtt_root, tmp_path):
    _fit_and_validate(tmp_path / "run", "msrvtt.yaml", "--data.init_args.data_root", str(msrvtt_root))


def test_cli_synth_video_fit_and_validate(tmp_path):
    _fit_and_validate(tmp_path / "run", "synth_video.yaml", "--data.init_args.data_root", str(tmp_path / "synth"),
                      "--data.init_args.num_train", "6", "--data.init_args.num_test", "2",
                      "--data.init_args.clip_frames", "8", "--data.init_args.frame_size", "32")


def test_trainer_fit_connects_the_frame_count(tmp_path):
    from lightning.pytorch import Trainer

    from perceptlm import InterfaceModule

    model = InterfaceModule(encoder="test-tiny-timesformer", llm="test-tiny-llama",
                            connector={"width": 32, "num_queries": 2})
    dm = SynthVideoDataModule(data_root=str(tmp_path), num_train=2, num_test=1, clip_frames=4, frame_size=32,
                              batch_size=2)
    trainer = Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)  # InterfaceModule.setup connects the unconnected datamodule
    assert dm.num_frames == 4 and trainer.global_step == 1
