"""Image captioning datamodules: COCO Captions (Chen et al., 2015) on the Karpathy split (Karpathy &
Fei-Fei, CVPR 2015) and TextCaps (Sidorov et al., ECCV 2020), as used in DePALM §4 (captioning with
an empty prompt, CIDEr-D on the references).

One sample per image. Training draws one of the image's captions per visit (the collator samples
among the targets, DePALM's "one of 5 captions sampled per visit"); evaluation scores against all
of its references, the raw sentences (the captioning metrics tokenise them as coco-caption's PTB
tokenizer does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perceptlm.data.annotations import ImageCaptionDataModule, field, read_json, records, text_field, text_list
from perceptlm.data.collate import Sample

KARPATHY_SPLITS = ("train", "restval", "val", "test")


def karpathy_images(path: Path) -> list[dict[str, Any]]:
    """``dataset_coco.json`` -> its ``images`` records, each with a valid ``split`` and int ``cocoid``."""
    images = records(read_json(path, "the Karpathy split file dataset_coco.json"), "images", path, "images")
    for index, image in enumerate(images):
        where = f"images[{index}]"
        split = field(image, "split", str, path, where)
        if split not in KARPATHY_SPLITS:
            raise ValueError(f"{path}: {where} has split={split!r}; valid: {KARPATHY_SPLITS}")
        field(image, "cocoid", int, path, where)
    return images


class CocoKarpathyDataModule(ImageCaptionDataModule):
    """COCO captions, Karpathy split: train 82,783 images (``split == "train"``; the 30,504
    ``restval`` images only with ``use_restval=True``), val 5,000, test 5,000; ~5 references each.

    Layout under ``data_root`` (``$PERCEPTLM_DATA/coco`` by default)::

        dataset_coco.json                # images[{filepath, filename, split, sentences[{raw, tokens}], cocoid}]
        train2014/COCO_train2014_*.jpg   # image = image_root / filepath / filename
        val2014/COCO_val2014_*.jpg
    """

    name = "coco-karpathy"
    default_subdir = "coco"

    def __init__(self, data_root: str | None = None, use_restval: bool = False,
                 karpathy_file: str = "dataset_coco.json", **kwargs: Any) -> None:
        super().__init__(data_root=data_root, **kwargs)
        self.use_restval = use_restval
        self.karpathy_file = karpathy_file

    def load_samples(self, split: str) -> list[Sample]:
        path = self.root() / self.karpathy_file
        wanted = {"train": {"train", "restval"} if self.use_restval else {"train"}}.get(split, {split})
        samples = []
        for index, image in enumerate(karpathy_images(path)):
            if image["split"] not in wanted:
                continue
            where = f"images[{index}] (cocoid {image['cocoid']})"
            folder, filename = text_field(image, "filepath", path, where), text_field(image, "filename", path, where)
            media = self.images() / folder / filename
            sentences = field(image, "sentences", list, path, where)
            if not sentences:
                raise ValueError(f"{path}: {where} has no sentences; expected ~5 captions")
            captions = [text_field(s, "raw", path, f"{where} sentences[{i}]") for i, s in enumerate(sentences)]
            samples.append(Sample(id=str(image["cocoid"]), media=media, prompt=self.template, targets=captions,
                                  extra={"image_id": image["cocoid"]}))
        if not samples:
            raise ValueError(f"{path}: no images with split in {sorted(wanted)}")
        return samples


class TextCapsDataModule(ImageCaptionDataModule):
    """TextCaps 0.1: captions that read the text in the image (21,953 train / 3,166 val images).
    The official test captions are not public, so validation and test both use ``val``.

    Layout under ``data_root`` (``$PERCEPTLM_DATA/textcaps`` by default)::

        TextCaps_0.1_{train,val}.json    # {"data": [{image_id, caption_str, reference_strs, ...}]}
        train_images/{image_id}.jpg      # the TextVQA train+val images (train and val)

    The files hold one record per caption; samples are per image: training targets are the image's
    ``caption_str`` values, evaluation references its ``reference_strs``.
    """

    name = "textcaps"
    default_subdir = "textcaps"
    splits = {"train": "train", "val": "val", "test": "val", "predict": "val"}

    def load_samples(self, split: str) -> list[Sample]:
        path = self.root() / f"TextCaps_0.1_{split}.json"
        data = records(read_json(path, f"the TextCaps {split} annotations"), "data", path, "caption records")
        by_image: dict[str, dict[str, Any]] = {}
        for index, record in enumerate(data):
            where = f"data[{index}]"
            image_id = text_field(record, "image_id", path, where)
            caption = text_field(record, "caption_str", path, f"{where} (image {image_id})")
            references = text_list(field(record, "reference_strs", list, path, where), path,
                                   f"{where} (image {image_id})", "reference_strs")
            entry = by_image.setdefault(image_id, {"captions": [], "references": references})
            entry["captions"].append(caption)
        if not by_image:
            raise ValueError(f"{path}: the 'data' list is empty")
        train = split == self.splits["train"]
        return [
            Sample(id=image_id, media=self.images() / "train_images" / f"{image_id}.jpg", prompt=self.template,
                   targets=entry["captions"] if train else entry["references"], extra={"image_id": image_id})
            for image_id, entry in by_image.items()
        ]
