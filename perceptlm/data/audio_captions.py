"""Audio captioning in the official formats: AudioCaps (Kim et al., NAACL 2019) and Clotho v2
(Drossos et al., ICASSP 2020), DePALM's audio benchmark (AudioCaps, test split, empty prompt).

Audio is read with librosa at its own rate and channel count (``load_audio``); the encoder's
``preprocess`` mixes to mono and resamples. A file that fails to decode becomes a skipped sample with
the reason (``MediaDataset``); a zero-length file is such a failure. Annotation errors (missing
columns, empty captions, rows pointing at absent audio) stop the run with the file and row named.

Captions are grouped per clip, as in DePALM: evaluation scores against all references of a clip,
training draws one of them per visit (``Sample.targets``). ``one_sample_per_caption=True`` makes one
training sample per caption instead (DePALM's ``split_multirow_train``; the DCASE baselines' way).
"""

from __future__ import annotations

import csv
import io
import logging
import string
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from perceptlm.data.base import PerceptionDataModule, check_eval_limits
from perceptlm.data.collate import Sample

log = logging.getLogger(__name__)


def load_audio(path: Path) -> tuple[np.ndarray, int]:
    """``(waveform, sample_rate)`` at the file's own rate; ``[channels, samples]`` when not mono."""
    import librosa

    wave, rate = librosa.load(str(path), sr=None, mono=False)
    if wave.shape[-1] == 0:
        raise ValueError(f"{path}: zero-length audio (no samples); a clip needs at least one sample")
    return wave, int(rate)


def read_csv(path: Path, columns: Sequence[str], what: str) -> list[tuple[str, dict[str, str]]]:
    """Rows of a CSV file with a header, as ``(where, row)`` where ``where`` names the row and line;
    a missing file, missing columns or a malformed row raise an error naming the file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found (see experiments/data/README.md for the layout)") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error}); expected {what}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; found {header}; expected {what} with "
                             f"columns {list(columns)}")
        rows = []
        for number, row in enumerate(reader, 1):
            where = f"row {number} (line {reader.line_num})"
            if None in row or any(value is None for value in row.values()):
                raise ValueError(f"{path}: {where} does not have the header's {len(header)} fields {header}")
            rows.append((where, row))
    except csv.Error as error:
        raise ValueError(f"{path}: line {reader.line_num}: invalid CSV ({error})") from None
    return rows


def cell(row: dict[str, str], column: str, path: Path, where: str) -> str:
    """A non-empty cell, stripped."""
    value = row[column].strip()
    if not value:
        raise ValueError(f"{path}: {where} has an empty {column!r}")
    return value


class AudioCaptionDataModule(PerceptionDataModule):
    """Base of the audio captioning datamodules: audio loading, the data root, evaluation subsets,
    grouping of captions per clip and checks of the audio files the annotations point at.

    ``data_root``: the dataset's folder (default ``$PERCEPTLM_DATA/<default_subdir>``);
    ``val_limit`` / ``test_limit``: fixed evaluation subsets (None = the whole split);
    ``missing_audio``: ``"error"`` (default) or ``"skip"`` for annotation rows whose audio is absent.
    """

    default_subdir = "audio"

    def __init__(self, data_root: str | None = None, task: str = "caption", val_limit: int | None = None,
                 test_limit: int | None = None, one_sample_per_caption: bool = False, missing_audio: str = "error",
                 **kwargs: Any) -> None:
        if task != "caption":
            raise ValueError(f"{self.name}: task {task!r} is not available; valid: 'caption'")
        if missing_audio not in ("error", "skip"):
            raise ValueError(f"missing_audio={missing_audio!r} is unknown; valid: 'error', 'skip'")
        check_eval_limits(val_limit, test_limit)
        super().__init__(data_root=data_root, task=task, **kwargs)
        self.val_limit, self.test_limit = val_limit, test_limit
        self.one_sample_per_caption, self.missing_audio = one_sample_per_caption, missing_audio

    def load_media(self, path: Path) -> tuple[np.ndarray, int]:
        return load_audio(path)

    def clip_samples(self, split: str, clips: list[tuple[str, Path, list[str], str]]) -> list[Sample]:
        """``(id, audio path, captions, where)`` per clip -> samples; ``where`` names the annotation
        file and row for the error when the audio file is absent."""
        present = [clip for clip in clips if clip[1].is_file()]
        if len(present) < len(clips):
            absent = [clip for clip in clips if not clip[1].is_file()]
            examples = "; ".join(f"{where}: {audio}" for _, audio, _, where in absent[:3])
            if self.missing_audio == "error":
                raise FileNotFoundError(f"{self.name} {split}: {len(absent)} of {len(clips)} clips have no audio "
                                        f"file, e.g. {examples} (missing_audio='skip' leaves them out)")
            log.warning("%s %s: leaving out %d of %d clips without audio, e.g. %s", self.name, split,
                        len(absent), len(clips), examples)
        samples = []
        for clip_id, audio, captions, _ in present:
            if split == self.splits["train"] and self.one_sample_per_caption:
                samples += [Sample(f"{clip_id}#{k}", audio, self.template, [c]) for k, c in enumerate(captions)]
            else:
                samples.append(Sample(clip_id, audio, self.template, list(captions)))
        return samples


class AudioCapsDataModule(AudioCaptionDataModule):
    """AudioCaps: ~49.8k training clips (1 caption each), 495 validation and 975 test clips (5 each),
    10 s excerpts of AudioSet YouTube videos.

    Layout under ``data_root`` (default ``$PERCEPTLM_DATA/audiocaps``)::

        {train,val,test}.csv                         # the official dataset/ folder of the AudioCaps repo
        audio/{train,val,test}/{youtube_id}_{start_time}.wav

    The csv columns are ``audiocap_id,youtube_id,start_time,caption``. The audio is not distributed
    officially (it is downloaded from YouTube); ``audio_dir`` and ``filename`` are templates with the
    fields ``{split}`` and ``{audiocap_id}``, ``{youtube_id}``, ``{start_time}``, e.g.
    ``filename: "Y{youtube_id}.wav"`` for AudioSet-style names. Rows are grouped per clip
    (``youtube_id``, ``start_time``); the clip's file is that of its first row.
    """

    name = "audiocaps"
    default_subdir = "audiocaps"
    COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")

    def __init__(self, data_root: str | None = None, audio_dir: str = "audio/{split}",
                 filename: str = "{youtube_id}_{start_time}.wav", **kwargs: Any) -> None:
        fields = {"split", *self.COLUMNS} - {"caption"}
        for template in (audio_dir, filename):
            used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
            if used - fields:
                raise ValueError(f"audiocaps: template {template!r} uses {sorted(used - fields)}; valid fields: "
                                 f"{sorted(fields)}")
        super().__init__(data_root=data_root, **kwargs)
        self.audio_dir, self.filename = audio_dir, filename

    def load_samples(self, split: str) -> list[Sample]:
        root = self.root()
        path = root / f"{split}.csv"
        clips: dict[tuple[str, str], tuple[str, Path, list[str], str]] = {}
        for where, row in read_csv(path, self.COLUMNS, "an AudioCaps annotation file"):
            values = {column: cell(row, column, path, where) for column in self.COLUMNS}
            try:
                start = float(values["start_time"])
            except ValueError:
                start = -1.0
            if not start >= 0:
                raise ValueError(f"{path}: {where} has start_time={values['start_time']!r}; expected seconds >= 0")
            key = (values["youtube_id"], values["start_time"])
            if key not in clips:
                folder = root / self.audio_dir.format(split=split, **values)
                audio = folder / self.filename.format(split=split, **values)
                clips[key] = (f"{key[0]}_{key[1]}", audio, [], f"{path} {where}")
            clips[key][2].append(values["caption"])
        return self.clip_samples(split, list(clips.values()))


class ClothoDataModule(AudioCaptionDataModule):
    """Clotho v2 (v2.1): 3,839 development, 1,045 validation and 1,045 evaluation clips of 15-30 s
    from Freesound, 5 captions each.

    Layout under ``data_root`` (default ``$PERCEPTLM_DATA/clotho``), as the Zenodo archives unpack::

        clotho_captions_{development,validation,evaluation}.csv   # file_name,caption_1..caption_5
        {development,validation,evaluation}/{file_name}            # the wav files

    Splits: train = development, val = validation, test = evaluation.
    """

    name = "clotho"
    default_subdir = "clotho"
    splits = {"train": "development", "val": "validation", "test": "evaluation", "predict": "evaluation"}
    COLUMNS = ("file_name", *(f"caption_{k}" for k in range(1, 6)))

    def load_samples(self, split: str) -> list[Sample]:
        root = self.root()
        path = root / f"clotho_captions_{split}.csv"
        clips, rows_of = [], {}
        for where, row in read_csv(path, self.COLUMNS, "a Clotho captions file"):
            name = cell(row, "file_name", path, where)
            if name in rows_of:
                raise ValueError(f"{path}: {where} repeats file_name {name!r} of {rows_of[name]}")
            rows_of[name] = where
            captions = [cell(row, column, path, where) for column in self.COLUMNS[1:]]
            clips.append((f"{split}/{name}", root / split / name, captions, f"{path} {where}"))
        return self.clip_samples(split, clips)
