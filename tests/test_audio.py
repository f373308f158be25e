"""Audio: AST and CLAP encoders (selection, exact padding masks, resampling, channels) and the audio
captioning datasets in their official formats (AudioCaps, Clotho, the synthetic tone set), each run
through the real CLI."""

from __future__ import annotations

import csv
import glob
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from perceptlm import zoo
from perceptlm.data import AudioCapsDataModule, ClothoDataModule, MediaDataset, SynthAudioDataModule, load_audio
from perceptlm.data.synth_audio import KINDS, ensure_generated
from perceptlm.encoders.ast_audio import ASTAudioEncoder
from perceptlm.encoders.clap_audio import ClapAudioEncoder
from perceptlm.evaluation.scoring import score

RNG = np.random.default_rng(0)
CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"


@pytest.fixture(scope="module")
def ast():
    return zoo.load_encoder("test-tiny-ast", layers=2)


@pytest.fixture(scope="module")
def clap():
    return zoo.load_encoder("test-tiny-clap", layers=2)


def noise(seconds: float, rate: int) -> np.ndarray:
    return (RNG.standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def tone(seconds: float, rate: int, frequency: float = 1000.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


# -- encoders -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["ast", "clap"])
@pytest.mark.parametrize("selection", [dict(layers=2, tokens="all"), dict(layers=[0], tokens="patches"),
                                       dict(layers=1, tokens="cls", final_norm=False)])
def test_feature_shapes_for_every_selection(request, family, selection):
    encoder = request.getfixturevalue(family)
    rate = encoder.sample_rate
    if selection["tokens"] == "cls" and family == "clap":
        with pytest.raises(ValueError, match="no CLS"):
            encoder.with_selection(**selection)
        return
    view = encoder.with_selection(**selection)
    batch = view.stack_media([view.preprocess((noise(1.0, rate), rate)), view.preprocess((noise(12.0, rate), rate))])
    features = view(batch)
    patches = view.grid[0] * view.grid[1]
    expected_tokens = {"all": patches + view.has_cls, "patches": patches, "cls": 1}[selection["tokens"]]
    layers = 2 if selection["layers"] == 2 else 1
    assert features.tokens.shape == (2, layers, expected_tokens, 64) == (2, layers, view.num_tokens, view.embed_dim)
    assert features.mask.shape == (2, expected_tokens)
    assert features.cls_index == (0 if family == "ast" and selection["tokens"] != "patches" else None)
    assert view.blank(2, features.tokens).tokens.shape == features.tokens.shape
    assert not any(p.requires_grad for p in view.parameters()) and not view.training


def test_ast_global_token_and_layers_match_hf(ast):
    item = ast.preprocess((noise(2.0, 16000), 16000))
    features = ast.with_selection(layers=1)(ast.stack_media([item]))
    raw = ast.with_selection(layers=[0, 1], final_norm=False)(ast.stack_media([item])).tokens
    with torch.no_grad():
        hf = ast.model(input_values=item["input_features"][None], output_hidden_states=True)
    assert ast.grid == (12, 101) and ast.num_raw_tokens == 1 + 12 * 101
    torch.testing.assert_close(features.tokens[:, 0, 0], hf.pooler_output)  # mean of normed CLS and DIST
    torch.testing.assert_close(features.tokens[:, 0, 1:], hf.last_hidden_state[:, 2:])
    torch.testing.assert_close(raw[:, 0, 0], hf.hidden_states[1][:, :2].mean(1))
    torch.testing.assert_close(raw[:, 0, 1:], hf.hidden_states[1][:, 2:])


def test_clap_grid_is_frequency_by_time_and_final_norm_last_stage_only(clap):
    item = clap.preprocess((noise(2.0, 48000), 48000))
    features = clap.with_selection(layers=1)(clap.stack_media([item]))
    with torch.no_grad():
        reference = clap.model(input_features=item["input_features"][None]).last_hidden_state  # [B, D, F, T]
    assert clap.grid == (4, 64) and reference.shape[2:] == (4, 64)
    torch.testing.assert_close(features.tokens[:, 0], reference.flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="final_norm=False"):
        zoo.load_encoder("test-tiny-clap", stage=1)
    stage1 = zoo.load_encoder("test-tiny-clap", stage=1, final_norm=False)
    assert (stage1.grid, stage1.embed_dim, stage1.num_layers) == ((8, 128), 32, 1)


# -- CLAP's projected reading (DePALM's CLAP features) ------------------------------------------------
@pytest.fixture(scope="module")
def clap_projected():
    return zoo.load_encoder("test-tiny-clap", output="projected")


def test_clap_projected_shapes_unit_norm_and_one_layer(clap_projected):
    encoder = clap_projected
    assert (encoder.num_layers, encoder.num_raw_tokens, encoder.embed_dim) == (1, 1 + 64 * 16, 32)
    assert encoder.has_cls and encoder.grid is None and encoder.output == "projected"
    items = [encoder.preprocess((noise(1.0, 48000), 48000)), encoder.preprocess((noise(12.0, 48000), 48000))]
    features = encoder(encoder.stack_media(items))
    assert features.tokens.shape == (2, 1, 1025, 32) and features.cls_index == 0 and features.grid is None
    torch.testing.assert_close(features.tokens.norm(dim=-1), torch.ones(2, 1, 1025))
    # each of the 64 time tokens stands for the 16 interpolated frames it covers
    frames = features.tokens[:, 0, 1:].unflatten(1, (64, 16))
    assert torch.equal(frames, frames[:, :, :1].expand_as(frames))
    # 1 s: 7 of 64 time tokens read audio (see the block mask test) -> 7 x 16 frame tokens + the global one
    assert int(features.mask[0].sum()) == 1 + 7 * 16 and features.mask[0, : 1 + 7 * 16].all() and features.mask[1].all()
    only_global = encoder.with_selection(tokens="cls")(encoder.stack_media(items))
    torch.testing.assert_close(only_global.tokens, features.tokens[:, :, :1])
    assert encoder.with_selection(tokens="patches").num_tokens == 1024
    with pytest.raises(ValueError, match="1 readable layers"):
        encoder.with_selection(layers=4)
    with pytest.raises(ValueError, match="no final norm to leave out"):
        encoder.with_selection(final_norm=False)
    with pytest.raises(ValueError, match="last stage"):
        zoo.load_encoder("test-tiny-clap", output="projected", stage=1, final_norm=False)
    with pytest.raises(ValueError, match="output='loose' is unknown"):
        zoo.load_encoder("test-tiny-clap", output="loose")


def test_clap_projected_is_htsat_embedding_and_fine_grained_embedding_through_the_projection(clap, clap_projected):
    """Token 0 = normalize(proj(mean of the normed last stage)); token 1 + f = normalize(proj(the
    frequency mean of the normed last-stage grid at time f // 16)), computed here from the block
    readout (a different path than the encoder's)."""
    item = clap.preprocess((noise(3.0, 48000), 48000))
    media = clap.stack_media([item])
    last = clap.with_selection(layers=1)(media).tokens[:, 0]  # [B, F*T, D]: last block + norm, (frequency, time)
    grid = last.unflatten(1, clap.grid)  # [B, 4, 64, D]
    global_ = grid.flatten(1, 2).mean(1, keepdim=True)
    fine = grid.mean(1).repeat_interleave(16, dim=1)  # HTS-AT's interpolate(): each time step repeated
    with torch.no_grad():
        expected = torch.nn.functional.normalize(clap_projected.projection(torch.cat([global_, fine], 1)), dim=-1)
    torch.testing.assert_close(clap_projected(media).tokens[:, 0], expected)
    assert clap.with_selection(layers=1, output="projected").num_raw_tokens == 1025  # a view of the block encoder


def test_clap_projected_from_a_full_checkpoint_and_the_cli_features(tmp_path, audiocaps_root):
    import transformers

    from perceptlm.cli import cli
    from perceptlm.encoders.clap_audio import clap_feature_extractor
    from perceptlm.zoo import tiny_clap_model

    audio = tiny_clap_model()
    text = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    full = transformers.ClapModel(transformers.ClapConfig(text_config=text, audio_config=audio.config.to_dict(),
                                                          projection_dim=32)).eval()
    full.save_pretrained(tmp_path / "clap")
    clap_feature_extractor(audio.config).save_pretrained(tmp_path / "clap")
    encoder = zoo.load_encoder(f"clap:{tmp_path / 'clap'}", output="projected")
    item = encoder.preprocess((noise(2.0, 48000), 48000))
    features = encoder(encoder.stack_media([item]))
    with torch.no_grad():  # CLAP's own audio embedding is the global token
        reference = full.get_audio_features(input_features=item["input_features"][None]).pooler_output
    torch.testing.assert_close(features.tokens[:, 0, 0], reference)
    audio.save_pretrained(tmp_path / "tower")  # a bare audio tower has no projection
    clap_feature_extractor(audio.config).save_pretrained(tmp_path / "tower")
    assert zoo.load_encoder(f"clap:{tmp_path / 'tower'}").output == "blocks"
    with pytest.raises(ValueError, match="needs CLAP's audio projection"):
        zoo.load_encoder(f"clap:{tmp_path / 'tower'}", output="projected")
    args = ["--config", str(CONFIGS / "mechanisms" / "depalm-qp-l0.yaml"),
            "--config", str(CONFIGS / "data" / "audiocaps.yaml"),
            "--model.init_args.encoder", "test-tiny-clap", "--model.init_args.llm", "test-tiny-llama",
            "--model.init_args.features", '{"output": "projected", "padding": "sample_repeat"}',
            "--data.init_args.data_root", str(audiocaps_root), "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path / "run")]
    model = cli(args, run=False).model.model
    assert model.encoder.output == "projected" and model.encoder.padding == "sample_repeat"
    assert (model.encoder.num_tokens, model.encoder.embed_dim) == (1025, 32)


def test_sample_repeat_padding_stretches_short_clips_to_the_window():
    from perceptlm.encoders.clap_audio import sample_repeat

    assert sample_repeat(np.array([1.0, 2.0, 3.0]), 8).tolist() == [1, 1, 1, 1, 2, 2, 2, 2]  # x2, x2, first 8
    assert sample_repeat(np.arange(10.0), 4).tolist() == [0, 1, 2, 3]  # long clips: the first samples
    encoder = zoo.load_encoder("test-tiny-clap", padding="sample_repeat")
    wave = noise(3.0, 48000)
    item = encoder.preprocess((wave, 48000))
    assert item["num_frames"] == 1001  # the window is full: no padding
    direct = encoder.feature_extractor(sample_repeat(wave, 480_000), sampling_rate=48000, return_tensors="np")
    torch.testing.assert_close(item["input_features"], torch.from_numpy(direct.input_features[0]).float())


def test_checkpoint_folders_load_through_the_zoo_prefixes(tmp_path):
    import transformers

    from perceptlm.encoders.clap_audio import clap_feature_extractor
    from perceptlm.zoo import tiny_clap_model

    audio = tiny_clap_model()
    text = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    full = transformers.ClapModel(transformers.ClapConfig(text_config=text, audio_config=audio.config.to_dict(),
                                                          projection_dim=32))
    full.save_pretrained(tmp_path / "clap")
    clap_feature_extractor(audio.config).save_pretrained(tmp_path / "clap")
    classifier = transformers.ASTForAudioClassification(transformers.ASTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=3))
    classifier.save_pretrained(tmp_path / "ast")
    for name, reference in ((f"clap:{tmp_path / 'clap'}", full.audio_model),
                            (f"ast:{tmp_path / 'ast'}", classifier.audio_spectrogram_transformer)):
        encoder = zoo.load_encoder(name)
        loaded = encoder.model.state_dict()
        assert encoder.name == name and all(torch.equal(v, loaded[k]) for k, v in reference.state_dict().items())
    assert type(zoo.load_encoder(f"clap:{tmp_path / 'clap'}").feature_extractor).__name__ == "ClapFeatureExtractor"
    with pytest.raises(ValueError, match="cannot load"):
        zoo.load_encoder(f"ast:{tmp_path / 'absent'}")
    with pytest.raises(ValueError, match="model_type"):  # an AST folder is not a CLAP checkpoint
        zoo.load_encoder(f"clap:{tmp_path / 'ast'}")
    with pytest.raises(ValueError, match=r"\[B, 1024, 128\]"):
        zoo.load_encoder("test-tiny-ast")(torch.zeros(1, 100, 128))


def _patch_embeddings(encoder, wave: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens before any attention (patch embedding, then the patch merges up to the read stage)
    in the encoder's token order, and the encoder's mask for the patch tokens."""
    item = encoder.preprocess((wave, encoder.sample_rate))
    captured = {}
    is_ast = isinstance(encoder, ASTAudioEncoder)
    body = encoder.model.embeddings.patch_embeddings if is_ast else encoder.model.audio_encoder.patch_embed
    handle = body.register_forward_hook(lambda module, inputs, output: captured.setdefault("x", output))
    features = encoder(encoder.stack_media([item]))
    handle.remove()
    tokens, mask = captured["x"], features.mask[0, int(encoder.has_cls):]
    if isinstance(encoder, ClapAudioEncoder):
        swin = encoder.model.audio_encoder
        with torch.no_grad():
            for stage in range(encoder.stage):
                tokens = swin.layers[stage].downsample(tokens, swin.input_resolutions[stage])
        tokens = encoder._to_grid(tokens)
    return tokens[0], mask


@pytest.mark.parametrize("family,samples", [("ast", 5_000), ("ast", 16_000), ("clap", 48_000), ("clap", 479_700)])
def test_mask_marks_exactly_the_tokens_that_read_real_audio(request, family, samples):
    """Changing the real samples changes exactly the tokens the mask keeps (before attention mixes)."""
    encoder = request.getfixturevalue(family).with_selection(layers=1)
    first, mask = _patch_embeddings(encoder, (RNG.standard_normal(samples) * 0.1).astype(np.float32))
    second, _ = _patch_embeddings(encoder, (RNG.standard_normal(samples) * 0.1).astype(np.float32))
    changed = (first - second).abs().amax(-1) > 0
    assert torch.equal(changed, mask) and 0 < int(mask.sum()) <= mask.numel()


def test_exact_valid_token_counts_for_one_second(ast, clap):
    # AST: 16,000 samples -> 1 + (16000 - 400) // 160 = 98 frames; patch columns every 10 frames ->
    # ceil(98 / 10) = 10 of 101 time columns x 12 frequency rows, + the global token = 121.
    item = ast.preprocess((noise(1.0, 16000), 16000))
    assert item["num_frames"] == 98
    mask = ast.with_selection(layers=1)(ast.stack_media([item])).mask[0]
    assert int(mask.sum()) == 1 + 12 * 10
    assert mask[1:].reshape(12, 101)[:, :10].all() and not mask[1:].reshape(12, 101)[:, 10:].any()
    # CLAP: 48,000 samples; centred 1024-sample Hann windows every 480 -> frames j with j*480 - 511 <
    # 48000: 102 of 1001; bicubic stretch to 1024 frames -> 106 valid; last-stage tokens span 16
    # frames -> ceil(106 / 16) = 7 of 64 time columns x 4 frequency rows = 28.
    item = clap.preprocess((noise(1.0, 48000), 48000))
    assert item["num_frames"] == 102
    mask = clap.with_selection(layers=1)(clap.stack_media([item])).mask[0]
    assert int(mask.sum()) == 4 * 7 and mask.reshape(4, 64)[:, :7].all()
    repeated = zoo.load_encoder("test-tiny-clap", padding="repeatpad").preprocess((noise(1.0, 48000), 48000))
    assert repeated["num_frames"] == 1001  # ten copies fill the window: nothing is padding


@pytest.mark.parametrize("family", ["ast", "clap"])
def test_resampling_and_stereo_files(request, family, tmp_path):
    encoder = request.getfixturevalue(family)
    native = encoder.preprocess((tone(1.0, encoder.sample_rate), encoder.sample_rate))
    peak = native["input_features"].reshape(-1, encoder.num_mel_bins)[: native["num_frames"]].argmax(-1)
    for rate in (8_000, 44_100):
        path = tmp_path / f"tone-{rate}.wav"
        soundfile.write(path, tone(1.0, rate), rate)
        item = encoder.preprocess(load_audio(path))
        assert abs(item["num_frames"] - native["num_frames"]) <= 1  # the same duration
        resampled = item["input_features"].reshape(-1, encoder.num_mel_bins)[: native["num_frames"] - 1].argmax(-1)
        assert (resampled == peak[: native["num_frames"] - 1]).float().mean() > 0.9  # the 1 kHz line stays put
    wrong = encoder.preprocess((tone(1.0, 8_000), encoder.sample_rate))  # 8 kHz read as native: pitch shifts
    assert (wrong["input_features"].reshape(-1, encoder.num_mel_bins)[:3].argmax(-1) != peak[:3]).all()
    stereo, mono = tmp_path / "stereo.wav", tmp_path / "mono.wav"
    soundfile.write(stereo, np.stack([tone(1.0, 16000), tone(1.0, 16000)], axis=1), 16000)
    soundfile.write(mono, tone(1.0, 16000), 16000)
    assert load_audio(stereo)[0].shape == (2, 16000)
    torch.testing.assert_close(encoder.preprocess(load_audio(stereo))["input_features"],
                               encoder.preprocess(load_audio(mono))["input_features"])


@pytest.mark.filterwarnings("ignore:PySoundFile failed", "ignore::FutureWarning")  # librosa's audioread fallback
def test_zero_length_and_corrupt_audio_are_skipped_with_the_reason(ast, tmp_path):
    empty, corrupt = tmp_path / "empty.wav", tmp_path / "corrupt.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(ValueError, match=r"empty\.wav: zero-length audio"):
        load_audio(empty)
    with pytest.raises(ValueError, match="empty waveform"):
        ast.preprocess(np.zeros(0, np.float32))
    from perceptlm.data import Sample

    dataset = MediaDataset([Sample("a", empty, "", ["x"]), Sample("b", corrupt, "", ["y"])], load_audio, ast.preprocess)
    assert dataset[0].media is None and "zero-length" in dataset[0].extra["skipped"]
    assert dataset[1].media is None and "corrupt.wav" in dataset[1].extra["skipped"]


# -- dataset fixtures in the official formats ------------------------------------------------------
def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def audiocaps_root(tmp_path_factory) -> Path:
    """train: 4 clips x 1 caption; val and test: 2 clips x 5 captions (AudioCaps' layout)."""
    root = tmp_path_factory.mktemp("audiocaps")
    clips = {"train": [c * 11 for c in "abcd"], "val": [c * 11 for c in "ef"], "test": [c * 11 for c in "gh"]}
    rates = [16_000, 44_100, 8_000, 48_000]
    for split, ids in clips.items():
        (root / "audio" / split).mkdir(parents=True)
        rows, number = [], 0
        for index, youtube_id in enumerate(ids):
            rate = rates[index % len(rates)]
            wave = noise(1.5, rate) if index % 2 else np.stack([noise(1.5, rate)] * 2, axis=1)  # some stereo
            soundfile.write(root / "audio" / split / f"{youtube_id}_30.wav", wave, rate)
            for k in range(1 if split == "train" else 5):
                number += 1
                rows.append([str(1000 * index + number), youtube_id, "30", f"a dog barks, then birds chirp {k}"])
        _write_csv(root / f"{split}.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], rows)
    return root


@pytest.fixture(scope="module")
def clotho_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clotho")
    for split, count in (("development", 4), ("validation", 2), ("evaluation", 2)):
        (root / split).mkdir()
        rows = []
        for index in range(count):
            name = f"{split} clip {index}.wav"  # Clotho names have spaces
            soundfile.write(root / split / name, noise(2.0, 44_100), 44_100)
            rows.append([name, *(f"rain falls on a roof, softly {k}" for k in range(1, 6))])
        _write_csv(root / f"clotho_captions_{split}.csv", ["file_name", *(f"caption_{k}" for k in range(1, 6))], rows)
    return root


def test_audiocaps_groups_references_per_clip_and_names_bad_rows(audiocaps_root, tmp_path):
    data = AudioCapsDataModule(data_root=str(audiocaps_root))
    train, test = data.load_samples("train"), data.load_samples("test")
    assert len(train) == 4 and all(len(s.targets) == 1 for s in train)
    assert len(test) == 2 and all(len(s.targets) == 5 for s in test) and test[0].targets[0].startswith("a dog barks,")
    assert test[0].media == audiocaps_root / "audio" / "test" / "ggggggggggg_30.wav"
    assert len(AudioCapsDataModule(data_root=str(audiocaps_root), one_sample_per_caption=True).load_samples("val")) == 2
    bad = tmp_path / "bad"
    (bad / "audio" / "test").mkdir(parents=True)
    cases = [("audiocap_id,youtube_id,caption\n1,x,y\n", r"test\.csv: missing columns \['start_time'\]"),
             ("audiocap_id,youtube_id,start_time,caption\n1,x,30,ok\n2,y,30,\n", r"test\.csv: row 2 .*empty 'caption'"),
             ("audiocap_id,youtube_id,start_time,caption\n1,x,soon,ok\n", r"row 1 .*start_time='soon'"),
             ("audiocap_id,youtube_id,start_time,caption\n1,x,30,ok\n", r"test\.csv row 1.*x_30\.wav")]
    for text, message in cases:
        (bad / "test.csv").write_text(text)
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            AudioCapsDataModule(data_root=str(bad)).load_samples("test")
    assert AudioCapsDataModule(data_root=str(bad), missing_audio="skip").load_samples("test") == []
    with pytest.raises(ValueError, match="valid fields"):
        AudioCapsDataModule(filename="{ytid}.wav")


def test_clotho_reads_five_references_and_names_bad_rows(clotho_root, tmp_path):
    data = ClothoDataModule(data_root=str(clotho_root))
    train, test = data.load_samples("development"), data.load_samples("evaluation")
    assert len(train) == 4 and len(test) == 2 and all(len(s.targets) == 5 for s in train + test)
    assert test[0].targets[0] == "rain falls on a roof, softly 1" and test[0].media.is_file()
    per_caption = ClothoDataModule(data_root=str(clotho_root), one_sample_per_caption=True)
    assert len(per_caption.load_samples("development")) == 20 and len(per_caption.load_samples("evaluation")) == 2
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    for text, message in [(header + "a.wav,1,2,,4,5\n", r"row 1 .*empty 'caption_3'"),
                          (header + "a.wav,1,2,3,4,5\na.wav,1,2,3,4,5\n", "row 2 .*repeats file_name 'a.wav'"),
                          (header + "a.wav,1,2,3,4\n", "row 1 .*header's 6 fields")]:
        (tmp_path / "clotho_captions_evaluation.csv").write_text(text)
        with pytest.raises(ValueError, match=message):
            ClothoDataModule(data_root=str(tmp_path)).load_samples("evaluation")


def test_synthetic_tones_match_their_captions(tmp_path):
    params = dict(num_train=6, num_test=2, sample_rate=16_000, min_seconds=2.0, max_seconds=4.0, data_seed=3)
    folder = ensure_generated(tmp_path, params)
    stamp = (folder / "train" / "00000.wav").stat().st_mtime_ns
    assert ensure_generated(tmp_path, params) == folder and (folder / "train" / "00000.wav").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob(".staging-*"))
    again = ensure_generated(tmp_path / "copy", params)
    assert (again / "train.csv").read_bytes() == (folder / "train.csv").read_bytes()
    assert (again / "train" / "00003.wav").read_bytes() == (folder / "train" / "00003.wav").read_bytes()
    with open(folder / "train.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        wave, rate = load_audio(folder / "train" / row["file_name"])
        assert rate == 16_000 and 2.0 <= wave.size / rate <= 4.0
        loud = np.sqrt(np.mean(wave[: wave.size // 160 * 160].reshape(-1, 160) ** 2, axis=1)) > 0.05  # 10 ms frames
        onsets = np.flatnonzero(loud[1:] & ~loud[:-1]) + 1
        events = [(int(n), pitch, kind) for n, pitch, kind in re.findall(r"(\d)x(high|low)-(beep|hum)", row["events"])]
        assert len(onsets) == sum(n for n, _, _ in events), row
        tones = [(pitch, kind) for n, pitch, kind in events for _ in range(n)]
        for start, (pitch, kind) in zip(onsets, tones):
            length = int(np.argmin(loud[start:])) * 0.01 if not loud[start:].all() else 1.0
            low, high = KINDS[kind]
            assert low - 0.03 <= length <= high + 0.03, (row, kind, length)
            segment = wave[(start + 2) * 160 : (start + 10) * 160]
            frequency = np.argmax(np.abs(np.fft.rfft(segment))) * rate / segment.size
            assert (frequency > 1000) == (pitch == "high"), (row, pitch, frequency)
        words = {1: "a", 2: "two", 3: "three"}
        assert row["caption_1"] == " then ".join(f"{words[n]} {p} {k}{'s' * (n > 1)}" for n, p, k in events)
    data = SynthAudioDataModule(data_root=str(tmp_path), **params)
    references = [s.targets for s in data.load_samples("test")]
    assert len(references) == 2 and all(len(r) == 3 for r in references)
    perfect = score("caption", [r[0] for r in references], references)
    swapped = score("caption", [references[1][0], references[0][0]], references)
    assert perfect["cider"] > swapped["cider"] and math.isfinite(perfect["cider"])


# -- the CLI -----------------------------------------------------------------------------------------
def _cli_args(run_dir: Path, config: str, encoder: str, data: list[str]) -> list[str]:
    return ["--config", str(CONFIGS / "mechanisms" / "depalm-qp-l0.yaml"), "--config", str(CONFIGS / "data" / config),
            "--config", str(CONFIGS / "trainer" / "cpu.yaml"),
            "--model.init_args.encoder", encoder, "--model.init_args.llm", "test-tiny-llama",
            "--model.init_args.connector", '{"width": 32, "num_queries": 4, "num_layers": 1}',
            "--model.init_args.max_new_tokens", "4", "--model.init_args.num_beams", "1", *data,
            "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "4",
            "--data.init_args.num_workers", "0", "--trainer.max_steps", "2", "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(run_dir), "--trainer.logger.init_args.save_dir", str(run_dir)]


@pytest.mark.parametrize("config,encoder,clips", [("audiocaps.yaml", "test-tiny-ast", 2),
                                                  ("clotho.yaml", "test-tiny-clap", 2),
                                                  ("synth_audio.yaml", "test-tiny-clap", 3)])
def test_fit_and_validate_through_the_cli(config, encoder, clips, audiocaps_root, clotho_root, tmp_path):
    from perceptlm.cli import cli

    roots = {"audiocaps.yaml": audiocaps_root, "clotho.yaml": clotho_root, "synth_audio.yaml": tmp_path / "synth"}
    data = ["--data.init_args.data_root", str(roots[config])]
    if config == "synth_audio.yaml":
        data += ["--data.init_args.num_train", "4", "--data.init_args.num_test", "3", "--data.init_args.val_limit", "3"]
    run_dir = tmp_path / "run"
    fitted = cli(["fit", *_cli_args(run_dir, config, encoder, data), "--trainer.limit_val_batches", "0"])
    assert fitted.trainer.global_step == 2 and fitted.model.model.encoder.name == encoder
    checkpoint = sorted(glob.glob(str(run_dir / "**" / "*.ckpt"), recursive=True))[-1]
    validated = cli(["validate", *_cli_args(run_dir, config, encoder, data), "--ckpt_path", checkpoint])
    metrics = validated.trainer.callback_metrics
    assert int(metrics["val/num_samples"]) == clips
    assert all(math.isfinite(float(metrics[f"val/{k}"])) for k in ("cider", "bleu4", "rouge_l"))
    tables = sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "files" / "media" / "table" / "val" /
                              "predictions*.table.json")))
    row = json.loads(Path(tables[-1]).read_text())["data"][0]
    assert row[1] == "Audio"  # a wandb.Audio cell (the run's table file names media cells by type), not a path
    assert len(row[4].split(" | ")) == (3 if config == "synth_audio.yaml" else 5)  # every reference
