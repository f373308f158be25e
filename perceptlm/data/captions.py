"""More captioning benchmarks of the instruction-tuning comparison (Garg & Bas 2023: captioning,
CIDEr): Flickr30k on the Karpathy split (Young et al. 2014; Karpathy & Fei-Fei 2015) and NoCaps
(Agrawal et al. 2019, "nocaps: novel object captioning at scale").

Both score CIDEr-D (and BLEU-4, ROUGE-L) against all references; NoCaps also per domain (in-,
near-, out-domain, each scored on its own images as the official evaluation does). With ``chair``,
CHAIR-i / CHAIR-s (Rohrbach et al. 2018) are reported on the COCO object vocabulary, the ground-truth
objects of an image being those its reference captions mention (as CHAIR's tool adds caption
mentions to COCO's instance annotations; these datasets have no COCO instance annotations).
For instruction models wrap them in :class:`~perceptlm.data.instruction.CaptionInstructDataModule`.
"""

from __future__ import annotations

from typing import Any

from perceptlm.data.annotations import ImageCaptionDataModule, field, read_json, records, text_field
from perceptlm.data.collate import Sample


def caption_meta(chair: bool, **extra: Any) -> dict[str, Any]:
    """A caption sample's ``meta`` for the evaluation: the task, the (empty) ground-truth object
    list CHAIR adds the references' mentions to when ``chair``, and ``extra`` (a NoCaps domain)."""
    return {"task": "caption", **({"objects": []} if chair else {}), **extra}


class Flickr30kDataModule(ImageCaptionDataModule):
    """Flickr30k, Karpathy split: 29,000 train / 1,014 val / 1,000 test images, 5 captions each.

    Layout under ``data_root`` (default ``$PERCEPTLM_DATA/flickr30k``)::

        dataset_flickr30k.json      # images[{filename, imgid, split, sentences[{raw, tokens}]}]
        flickr30k-images/{filename} # ``image_folder`` (under ``image_root`` when given)
    """

    name = "flickr30k"
    default_subdir = "flickr30k"

    def __init__(self, data_root: str | None = None, karpathy_file: str = "dataset_flickr30k.json",
                 image_folder: str = "flickr30k-images", chair: bool = True, **kwargs: Any) -> None:
        super().__init__(data_root=data_root, **kwargs)
        self.karpathy_file, self.image_folder, self.chair = karpathy_file, image_folder, chair

    def load_samples(self, split: str) -> list[Sample]:
        path = self.root() / self.karpathy_file
        images = records(read_json(path, "the Karpathy split file dataset_flickr30k.json"), "images", path, "images")
        samples = []
        for index, image in enumerate(images):
            where = f"images[{index}]"
            image_split = field(image, "split", str, path, where)
            if image_split not in ("train", "val", "test", "restval"):
                raise ValueError(f"{path}: {where} has split={image_split!r}; valid: train, val, test")
            if image_split != split:
                continue
            filename = text_field(image, "filename", path, where)
            sentences = field(image, "sentences", list, path, f"{where} ({filename})")
            if not sentences:
                raise ValueError(f"{path}: {where} ({filename}) has no sentences; expected 5 captions")
            captions = [text_field(s, "raw", path, f"{where} sentences[{i}]") for i, s in enumerate(sentences)]
            image_id = image.get("imgid", index)
            samples.append(Sample(str(image_id), self.images() / self.image_folder / filename, self.template, captions,
                                  {"image_id": image_id, "meta": caption_meta(self.chair)}))
        if not samples:
            raise ValueError(f"{path}: no images with split {split!r}")
        return samples


class NoCapsDataModule(ImageCaptionDataModule):
    """NoCaps validation: 4,500 Open Images images (in-domain 1,413 / near-domain 2,340 /
    out-domain 747), 10 references each. Evaluation only (``val`` and ``test`` read it).

    Layout under ``data_root`` (default ``$PERCEPTLM_DATA/nocaps``)::

        nocaps_val_4500_captions.json   # COCO-style: images[{id, file_name, domain}], annotations[{image_id, caption}]
        val/{file_name}                 # ``image_folder`` (under ``image_root`` when given)
    """

    name = "nocaps"
    default_subdir = "nocaps"
    splits = {"train": "train", "val": "val", "test": "val", "predict": "val"}
    DOMAINS = ("in-domain", "near-domain", "out-domain")

    def __init__(self, data_root: str | None = None, annotation_file: str = "nocaps_val_4500_captions.json",
                 image_folder: str = "val", chair: bool = True, **kwargs: Any) -> None:
        super().__init__(data_root=data_root, **kwargs)
        self.annotation_file, self.image_folder, self.chair = annotation_file, image_folder, chair

    def load_samples(self, split: str) -> list[Sample]:
        if split == "train":
            raise ValueError("NoCaps has no training split (it evaluates captioners trained on COCO); "
                             "use `validate` or `test`")
        path = self.root() / self.annotation_file
        data = read_json(path, "the NoCaps annotations nocaps_val_4500_captions.json")
        images = records(data, "images", path, "images")
        captions: dict[int, list[str]] = {}
        for index, note in enumerate(records(data, "annotations", path, "annotations")):
            image_id = field(note, "image_id", int, path, f"annotations[{index}]")
            captions.setdefault(image_id, []).append(text_field(note, "caption", path, f"annotations[{index}]"))
        samples = []
        for index, image in enumerate(images):
            where = f"images[{index}]"
            image_id = field(image, "id", int, path, where)
            domain = text_field(image, "domain", path, where)
            if domain not in self.DOMAINS:
                raise ValueError(f"{path}: {where} has domain={domain!r}; valid: {self.DOMAINS}")
            if image_id not in captions:
                raise ValueError(f"{path}: {where} (id {image_id}) has no captions in 'annotations'")
            media = self.images() / self.image_folder / text_field(image, "file_name", path, where)
            samples.append(Sample(str(image_id), media, self.template, captions[image_id],
                                  {"image_id": image_id, "meta": caption_meta(self.chair, group=domain)}))
        return samples
