"""Image datasets in their official formats: tiny fixtures (real JPEGs) driven through the real CLI,
split membership (Karpathy captions and VQA), training targets and annotation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from perceptlm.cli import cli
from perceptlm.data import (AOKVQADataModule, CocoKarpathyDataModule, OKVQADataModule, TextCapsDataModule,
                            TextVQADataModule, VQAv2DataModule)

CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"
ANSWERS = ["two"] * 5 + ["2"] * 3 + ["three", "few"]  # 10 annotators; "two" is the most frequent


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40 + seed % 7, 30), ((37 * seed) % 256, (91 * seed) % 256, 128)).save(path, "JPEG")


def _dump(path: Path, data) -> None:
    path.write_text(json.dumps(data))


# -- fixture writers (one per dataset, official formats) -------------------------------------------------
KARPATHY = [(1, "train2014", "train"), (2, "train2014", "train"), (3, "val2014", "restval"),
            (4, "val2014", "val"), (5, "val2014", "test"), (6, "val2014", "test")]


def write_karpathy(root: Path, images: bool = True) -> None:
    records = []
    for cocoid, folder, split in KARPATHY:
        filename = f"COCO_{folder}_{cocoid:012d}.jpg"
        sentences = [{"raw": f"A photo number {cocoid}, caption {k}.", "tokens": ["a", "photo"]} for k in range(5)]
        records.append({"filepath": folder, "filename": filename, "split": split, "sentences": sentences,
                        "cocoid": cocoid, "imgid": cocoid, "sentids": list(range(5))})
        if images:
            _jpeg(root / folder / filename, cocoid)
    _dump(root / "dataset_coco.json", {"images": records, "dataset": "coco"})


def write_vqa_coco(root: Path, question_file: str, annotation_file: str) -> None:
    """VQAv2 / OK-VQA format: two questions per image; image ids as in KARPATHY."""
    for split, ids in (("train", [1, 2]), ("val", [3, 4, 5, 6])):
        questions, annotations = [], []
        for image_id in ids:
            _jpeg(root / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg", image_id)
            for k in range(2):
                question_id = image_id * 10 + k
                questions.append({"image_id": image_id, "question": f"How many things in {image_id}?",
                                  "question_id": question_id})
                answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(ANSWERS)]
                annotations.append({"question_type": "how many", "multiple_choice_answer": "two",
                                    "answers": answers, "image_id": image_id, "answer_type": "number",
                                    "question_id": question_id})
        _dump(root / question_file.format(split=split), {"info": {}, "task_type": "Open-Ended",
                                                         "data_subtype": f"{split}2014", "questions": questions})
        _dump(root / annotation_file.format(split=split), {"info": {}, "data_subtype": f"{split}2014",
                                                           "annotations": annotations})


def write_vqav2(root: Path) -> None:
    write_vqa_coco(root, VQAv2DataModule.question_file, VQAv2DataModule.annotation_file)
    write_karpathy(root, images=False)


def write_okvqa(root: Path) -> None:
    write_vqa_coco(root, OKVQADataModule.question_file, OKVQADataModule.annotation_file)


def write_aokvqa(root: Path) -> None:
    for split, ids in (("train", [11, 12, 13]), ("val", [14, 15])):
        data = []
        for image_id in ids:
            _jpeg(root / f"{split}2017" / f"{image_id:012d}.jpg", image_id)
            data.append({"split": split, "image_id": image_id, "question_id": f"q{image_id}x",
                         "question": "What is it used for?", "choices": ["a", "b", "c", "d"],
                         "correct_choice_idx": 0, "direct_answers": list(ANSWERS),
                         "difficult_direct_answer": False, "rationales": ["because"]})
        _dump(root / f"aokvqa_v1p0_{split}.json", data)


def write_textvqa(root: Path) -> None:
    for split, ids in (("train", ["a1", "b2", "c3"]), ("val", ["d4", "e5"])):
        data = []
        for k, image_id in enumerate(ids):
            _jpeg(root / "train_images" / f"{image_id}.jpg", k + 20)
            data.append({"question": "what does the sign say?", "image_id": image_id, "image_classes": ["Sign"],
                         "answers": list(ANSWERS), "question_tokens": ["what"],
                         "question_id": 100 + k + 10 * len(split),
                         "set_name": split})
        _dump(root / f"TextVQA_0.5.1_{split}.json", {"dataset_type": split, "dataset_name": "textvqa",
                                                      "dataset_version": "0.5.1", "data": data})


def write_textcaps(root: Path) -> None:
    for split, ids in (("train", ["f1", "f2", "f3"]), ("val", ["f4", "f5"])):
        data = []
        for k, image_id in enumerate(ids):
            _jpeg(root / "train_images" / f"{image_id}.jpg", k + 30)
            references = [f"a sign that reads {image_id} {c}" for c in range(5)]
            for c, caption in enumerate(references):
                data.append({"image_id": image_id, "image_classes": ["Sign"], "image_name": image_id,
                             "image_path": f"train/{image_id}.jpg", "caption_id": k * 5 + c, "caption_str": caption,
                             "caption_tokens": caption.split(), "reference_strs": references,
                             "reference_tokens": [r.split() for r in references], "set_name": split})
        _dump(root / f"TextCaps_0.1_{split}.json", {"dataset_type": split, "dataset_name": "textcaps",
                                                     "dataset_version": "0.1", "data": data})


WRITERS = {"coco_karpathy": write_karpathy, "vqav2": write_vqav2, "okvqa": write_okvqa, "aokvqa": write_aokvqa,
           "textvqa": write_textvqa, "textcaps": write_textcaps}


# -- the real CLI on every dataset --------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_fit_and_validate_through_the_cli(dataset, tmp_path):
    root, run = tmp_path / "data", tmp_path / "run"
    root.mkdir()
    WRITERS[dataset](root)
    args = [
        "--config", str(CONFIGS / "mechanisms" / "depalm-qp-l0.yaml"),
        "--config", str(CONFIGS / "data" / f"{dataset}.yaml"),
        "--config", str(CONFIGS / "trainer" / "cpu.yaml"),
        "--data.init_args.data_root", str(root),
        "--model.init_args.encoder", "test-tiny-vit",
        "--model.init_args.llm", "test-tiny-llama",
        "--model.init_args.connector", '{"width": 64, "num_queries": 4}',
        "--model.init_args.max_new_tokens", "3",
        "--model.init_args.num_beams", "1",
        "--data.init_args.batch_size", "2",
        "--data.init_args.eval_batch_size", "2",
        "--data.init_args.val_limit", "2",
        "--trainer.max_steps", "2",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.default_root_dir", str(run),
        "--trainer.logger.init_args.save_dir", str(run),
    ]
    fit = cli(["fit", *args])
    assert fit.trainer.global_step == 2
    train_ids = fit.datamodule.subset_ids["train"]
    assert len(train_ids) >= 2 and not set(train_ids) & set(fit.datamodule.subset_ids["val"])
    checkpoint = next(run.rglob("*.ckpt"))
    validate = cli(["validate", *args, "--ckpt_path", str(checkpoint)])
    metrics = validate.trainer.callback_metrics
    key = "val/cider" if dataset in ("coco_karpathy", "textcaps") else "val/accuracy"
    assert key in metrics and metrics["val/num_samples"] == len(validate.datamodule.subset_ids["val"]) >= 1


# -- split membership and targets ----------------------------------------------------------------------------
def _samples(module, stage: str):
    return module.load_samples(module.splits[stage])


def test_karpathy_captions_restval_and_references(tmp_path):
    write_karpathy(tmp_path)
    default = CocoKarpathyDataModule(data_root=str(tmp_path))
    train = _samples(default, "train")
    assert [s.id for s in train] == ["1", "2"]  # restval (3) excluded by default
    with_restval = CocoKarpathyDataModule(data_root=str(tmp_path), use_restval=True)
    assert [s.id for s in _samples(with_restval, "train")] == ["1", "2", "3"]
    test = _samples(default, "test")
    assert [s.id for s in test] == ["5", "6"] and [s.id for s in _samples(default, "val")] == ["4"]
    assert len(test[0].targets) == 5 and test[0].targets[0] == "A photo number 5, caption 0."  # raw sentences
    assert test[0].media == tmp_path / "val2014" / "COCO_val2014_000000000005.jpg" and test[0].prompt == ""


def test_vqav2_karpathy_split_membership(tmp_path):
    write_vqav2(tmp_path)
    karpathy = VQAv2DataModule(data_root=str(tmp_path), karpathy_split=True)
    image_of = {s.id: int(s.id) // 10 for s in _samples(karpathy, "train")}
    assert sorted(set(image_of.values())) == [1, 2, 3]  # train2014 + restval; Karpathy val/test held out
    assert {int(s.id) // 10 for s in _samples(karpathy, "val")} == {4}
    test = _samples(karpathy, "test")
    assert {int(s.id) // 10 for s in test} == {5, 6} and len(test) == 4
    assert test[0].targets == ANSWERS and test[0].prompt == "How many things in 5?\n\nAnswer: "
    assert test[0].media == tmp_path / "val2014" / "COCO_val2014_000000000005.jpg"
    official = VQAv2DataModule(data_root=str(tmp_path))
    assert {int(s.id) // 10 for s in _samples(official, "train")} == {1, 2}
    assert [s.id for s in _samples(official, "test")] == [s.id for s in _samples(official, "val")]  # val2014


def test_training_answer_choice(tmp_path):
    write_okvqa(tmp_path)
    sampled = _samples(OKVQADataModule(data_root=str(tmp_path)), "train")
    assert sampled[0].targets == ANSWERS  # the collator draws one: each answer in proportion to its count
    frequent = OKVQADataModule(data_root=str(tmp_path), train_answer="most_frequent")
    assert _samples(frequent, "train")[0].targets == ["two"] and _samples(frequent, "val")[0].targets == ANSWERS
    with pytest.raises(ValueError, match="most_frequent"):
        OKVQADataModule(data_root=str(tmp_path), train_answer="mode")


def test_textcaps_groups_captions_per_image(tmp_path):
    write_textcaps(tmp_path)
    module = TextCapsDataModule(data_root=str(tmp_path))
    train, test = _samples(module, "train"), _samples(module, "test")
    assert [s.id for s in train] == ["f1", "f2", "f3"] and len(train[0].targets) == 5
    assert [s.id for s in test] == ["f4", "f5"] and test[0].targets[4] == "a sign that reads f4 4"


# -- bad annotations --------------------------------------------------------------------------------------------
def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    _dump(path, data)


ANNOTATIONS, QUESTIONS = "mscoco_train2014_annotations.json", "OpenEnded_mscoco_train2014_questions.json"
BAD = [
    ("okvqa", ANNOTATIONS, lambda d: d["annotations"].pop(1), "question_id 11, which no record"),
    ("okvqa", ANNOTATIONS, lambda d: d["annotations"][0].update(answers=[]), "has no answers"),
    ("okvqa", QUESTIONS, lambda d: d["questions"][0].pop("question"), "no 'question'"),
    ("coco_karpathy", "dataset_coco.json", lambda d: d["images"][0]["sentences"][2].update(raw=" "), "empty 'raw'"),
    ("coco_karpathy", "dataset_coco.json", lambda d: d["images"][1].update(split="dev"), "split='dev'"),
    ("aokvqa", "aokvqa_v1p0_train.json", lambda d: d[1].update(direct_answers=[]), "no direct_answers"),
    ("textvqa", "TextVQA_0.5.1_train.json", lambda d: d["data"][2]["answers"].__setitem__(3, ""), "empty or non-string"),
    ("textcaps", "TextCaps_0.1_train.json", lambda d: d["data"][3].update(caption_str=""), "empty 'caption_str'"),
]
MODULES = {"okvqa": OKVQADataModule, "coco_karpathy": CocoKarpathyDataModule, "aokvqa": AOKVQADataModule,
           "textvqa": TextVQADataModule, "textcaps": TextCapsDataModule}


@pytest.mark.parametrize("dataset,filename,change,message", BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD])
def test_bad_annotations_name_file_and_record(dataset, filename, change, message, tmp_path):
    WRITERS[dataset](tmp_path)
    _edit(tmp_path / filename, change)
    with pytest.raises(ValueError, match=message) as error:
        _samples(MODULES[dataset](data_root=str(tmp_path)), "train")
    assert filename in str(error.value)


def test_invalid_json_and_missing_root(tmp_path, monkeypatch):
    write_textvqa(tmp_path)
    (tmp_path / "TextVQA_0.5.1_train.json").write_text('{"data": [')
    with pytest.raises(ValueError, match=r"TextVQA_0\.5\.1_train\.json: invalid JSON"):
        _samples(TextVQADataModule(data_root=str(tmp_path)), "train")
    monkeypatch.delenv("PERCEPTLM_DATA", raising=False)
    with pytest.raises(ValueError, match="PERCEPTLM_DATA"):
        TextVQADataModule().root()
    monkeypatch.setenv("PERCEPTLM_DATA", str(tmp_path))
    assert TextVQADataModule().root() == tmp_path / "textvqa"
