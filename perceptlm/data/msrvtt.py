"""MSR-VTT (Xu et al., "MSR-VTT: A Large Video Description Dataset for Bridging Video and
Language", CVPR 2016) video captioning: 10,000 clips, 20 captions each. DePALM's protocol: the 7k
training videos and the 1k-A test videos ("JSFusion" split, Yu et al., ECCV 2018), 16 frames.

Layout under ``data_root`` (file names configurable)::

    MSRVTT_data.json            # official: {"videos": [{video_id, category, url, start time,
                                #   end time, split, id}], "sentences": [{caption, video_id, sen_id}]}
    videos/all/{video_id}.mp4   # what unpacking MSRVTT.zip gives
    MSRVTT_train.7k.csv         # optional: column video_id (7,010 training videos)
    MSRVTT_JSFUSION_test.csv    # optional: columns key,vid_key,video_id,sentence (1,000 test videos)

The two csv files are distributed with CLIP4Clip's ``msrvtt_data``. When one is absent, its split
falls back to the official ``split`` field of ``MSRVTT_data.json``: training reads ``train``
(6,513 videos) instead of the 7k list, testing reads ``test`` (2,990 videos) instead of 1k-A.

Task ``caption``: one sample per video; training picks one of its captions per visit, evaluation
scores against all of them. Validation reads ``val_limit`` videos of the test split (MSR-VTT's
official ``validate`` videos are part of the 7k training list).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from perceptlm.data.collate import Sample
from perceptlm.data.video import VideoDataModule

OFFICIAL_SPLITS = ("train", "validate", "test")


def read_annotations(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``MSRVTT_data.json`` -> ({video_id: official split}, {video_id: captions}) with record-level
    validation (every video has a split and at least one caption; every caption names a known video)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: MSR-VTT annotation file not found (MSRVTT_data.json)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("videos", "sentences")):
        raise ValueError(f"{path}: expected an object with the lists 'videos' and 'sentences' (MSRVTT_data.json)")
    splits: dict[str, str] = {}
    for index, video in enumerate(data["videos"]):
        if not isinstance(video, dict) or not isinstance(video.get("video_id"), str) or not video["video_id"]:
            raise ValueError(f"{path}: videos[{index}] is {video!r}; expected an object with a 'video_id' string")
        if video.get("split") not in OFFICIAL_SPLITS:
            raise ValueError(f"{path}: videos[{index}] ({video['video_id']}) has split {video.get('split')!r}; "
                             f"valid: {OFFICIAL_SPLITS}")
        splits[video["video_id"]] = video["split"]
    captions: dict[str, list[str]] = {vid: [] for vid in splits}
    for index, sentence in enumerate(data["sentences"]):
        if not isinstance(sentence, dict) or not isinstance(sentence.get("caption"), str) or "video_id" not in sentence:
            raise ValueError(f"{path}: sentences[{index}] is {sentence!r}; expected {{caption, video_id, sen_id}}")
        if not sentence["caption"].strip():
            raise ValueError(f"{path}: sentences[{index}] (sen_id {sentence.get('sen_id')}) has an empty caption")
        if sentence["video_id"] not in captions:
            raise ValueError(
                f"{path}: sentences[{index}] names video_id {sentence['video_id']!r}, which is not in 'videos'"
            )
        captions[sentence["video_id"]].append(sentence["caption"].strip())
    bare = [vid for vid, caps in captions.items() if not caps]
    if bare:
        raise ValueError(f"{path}: {len(bare)} videos have no caption in 'sentences', e.g. {bare[:3]}")
    return splits, captions


def read_video_ids(path: Path, known: dict[str, Any]) -> list[str]:
    """The ``video_id`` column of a split csv (7k train or JSFusion 1k-A test), in file order, each
    id once; every id must be in ``known`` (the annotation's videos)."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "video_id" not in reader.fieldnames:
                raise ValueError(f"{path}: no 'video_id' column (columns: {reader.fieldnames})")
            ids: list[str] = []
            for row_number, row in enumerate(reader, start=2):  # line 1 is the header
                video_id = (row.get("video_id") or "").strip()
                if video_id not in known:
                    raise ValueError(f"{path}: line {row_number} names video_id {video_id!r}, which is not in "
                                     f"MSRVTT_data.json")
                if video_id not in ids:
                    ids.append(video_id)
    except csv.Error as error:
        raise ValueError(f"{path}: invalid CSV ({error})") from None
    if not ids:
        raise ValueError(f"{path}: no video ids")
    return ids


class MSRVTTDataModule(VideoDataModule):
    """MSR-VTT captioning (see the module docstring for the layout and splits).

    ``test_limit``/``val_limit``: evaluation subsets (None = the whole split; validation reads 100
    test videos by default). ``annotation_file``, ``train_list``, ``test_list``, ``video_dir``: paths
    relative to ``data_root`` (``PERCEPTLM_DATA/msrvtt`` when unset).
    """

    name = "msrvtt"
    splits = {"train": "train", "val": "test", "test": "test", "predict": "test"}

    def __init__(
        self,
        data_root: str | None = None,
        task: str = "caption",
        test_limit: int | None = None,
        val_limit: int | None = 100,
        annotation_file: str = "MSRVTT_data.json",
        train_list: str = "MSRVTT_train.7k.csv",
        test_list: str = "MSRVTT_JSFUSION_test.csv",
        video_dir: str = "videos/all",
        **kwargs: Any,
    ) -> None:
        if task != "caption":
            raise ValueError(f"MSR-VTT task {task!r} is unknown; valid: 'caption'")
        super().__init__(data_root=data_root, task=task, **kwargs)
        self.test_limit, self.val_limit = test_limit, val_limit
        self.annotation_file, self.train_list, self.test_list = annotation_file, train_list, test_list
        self.video_dir = video_dir

    def resolve_root(self) -> Path:
        if self.data_root:
            return Path(self.data_root)
        if os.environ.get("PERCEPTLM_DATA"):
            return Path(os.environ["PERCEPTLM_DATA"]) / "msrvtt"
        raise ValueError(
            "MSR-VTT needs data_root (or the PERCEPTLM_DATA environment variable); see experiments/data/README.md"
        )

    def load_samples(self, split: str) -> list[Sample]:
        if split not in ("train", "test"):
            raise ValueError(f"MSR-VTT split {split!r} is unknown; valid: 'train', 'test'")
        root = self.resolve_root()
        splits, captions = read_annotations(root / self.annotation_file)
        listing = root / (self.train_list if split == "train" else self.test_list)
        ids = read_video_ids(listing, splits) if listing.is_file() else [v for v, s in splits.items() if s == split]
        videos = root / self.video_dir
        return [Sample(id=vid, media=videos / f"{vid}.mp4", prompt=self.template, targets=captions[vid]) for vid in ids]
