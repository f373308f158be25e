"""The mismatched-media baseline: each test sample answered with another sample's media (a fixed
pairing within its evaluation batch), which keeps the prompt, the format and the media statistics
and removes only the media-question correspondence; scored as ``mismatched_<metric>``."""

from __future__ import annotations

import torch

from perceptlm.data.collate import Collator, Sample
from perceptlm.encoders.base import PerceptualFeatures
from perceptlm.evaluation import score_records
from perceptlm.model import PerceptualLM
from perceptlm.training.evaluation import Evaluator, mismatched_partners, take_media


def test_partners_are_the_next_sample_with_other_media():
    assert mismatched_partners(["a", "a", "b", "c", "c"]) == [2, 2, 3, 0, 0]
    assert mismatched_partners(["a", "b"]) == [1, 0]
    assert mismatched_partners(["a", "a", "a"]) == [None, None, None]  # nothing to pair with
    assert mismatched_partners(["a"]) == [None]


def test_take_media_reorders_every_kind_of_batch():
    index = torch.tensor([2, 0, 1])
    images = torch.arange(3.0).view(3, 1)
    assert take_media(images, index).flatten().tolist() == [2.0, 0.0, 1.0]
    audio = {"input_features": torch.arange(3.0).view(3, 1), "attention_mask": torch.tensor([[1], [0], [1]])}
    assert take_media(audio, index)["attention_mask"].flatten().tolist() == [1, 1, 0]
    features = PerceptualFeatures(torch.arange(3.0).view(3, 1, 1, 1), torch.tensor([[True], [False], [True]]), 0, None)
    taken = take_media(features, index)
    assert taken.tokens.flatten().tolist() == [2.0, 0.0, 1.0] and taken.mask.flatten().tolist() == [True, True, False]


def test_the_evaluator_scores_the_mismatched_baseline(tiny_encoder, tiny_llm):
    model = PerceptualLM.build("limber-1", tiny_encoder, tiny_llm, max_new_tokens=3).eval()
    torch.manual_seed(0)
    images = [torch.randn(3, 32, 32) for _ in range(3)]
    # two questions on image 0, one each on images 1 and 2 (sources name the media)
    samples = [Sample(str(i), images[m], f"question {i}?", ["yes"], {"source": f"img{m}.png"})
               for i, m in enumerate([0, 0, 1, 2])]
    batch = Collator(model.tokenizer, "vqa", train=False)(samples)
    evaluator = Evaluator(model, blind=False, mismatched=True)
    evaluator.step(batch)
    records = evaluator.records
    assert [r["mismatched_media"] for r in records] == ["img1.png", "img1.png", "img2.png", "img0.png"]
    paired = torch.stack([images[1], images[1], images[2], images[0]])
    expected = model.decode(model.generate(paired, batch.prompt_ids, batch.prompt_mask))
    assert [r["mismatched_prediction"] for r in records] == expected
    assert [r["prediction"] for r in records] == model.decode(model.generate(batch.media, batch.prompt_ids,
                                                                             batch.prompt_mask))
    records[3]["mismatched_prediction"] = "yes"  # the scorer reads the mismatched answers
    metrics = score_records("vqa", records)
    assert metrics["mismatched_num_samples"] == 4.0 and "mismatched_accuracy" in metrics
    expected_accuracy = score_records("vqa", [{**r, "prediction": r["mismatched_prediction"]} for r in records])
    assert metrics["mismatched_accuracy"] == expected_accuracy["accuracy"]
    records[0]["mismatched_prediction"] = None  # a sample without a partner is left out of the baseline
    assert score_records("vqa", records)["mismatched_num_samples"] == 3.0
