"""BLIP-2's image-text contrastive loss (ITC) and its use as an auxiliary loss of InterfaceModule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perceptlm import build
from perceptlm.data.collate import Collator, Sample
from perceptlm.losses.contrastive import ImageTextContrastive

TINY_QFORMER = {"width": 64, "num_layers": 2, "num_heads": 4, "num_queries": 4}


def test_distinct_answers_give_the_clip_loss_over_the_best_token():
    torch.manual_seed(0)
    head = ImageTextContrastive(12, dim=8, label_smoothing=0.0)
    visual, text = torch.randn(5, 3, 12), torch.randn(5, 12)
    image = F.normalize(head.image(visual), dim=-1)
    words = F.normalize(head.text(text), dim=-1)
    logits = torch.stack([torch.stack([(image[i] @ words[j]).max() for j in range(5)]) for i in range(5)]) / 0.07
    reference = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.t(), torch.arange(5))) / 2
    assert torch.allclose(head(visual, text), reference, atol=1e-5)


def test_a_repeated_answer_counts_as_a_positive_of_each_of_its_images():
    """Equal answers embed equally, so the loss equals the one whose target spreads over every pair of
    the same answer (no repeated caption is a negative of its own images); label smoothing too."""
    torch.manual_seed(0)
    visual, text = torch.randn(4, 3, 12), torch.randn(4, 12)
    text[1] = text[0]  # samples 0 and 1 share their answer
    for smoothing in (0.0, 0.1):
        head = ImageTextContrastive(12, dim=8, label_smoothing=smoothing)
        logits = head.similarity(visual, text)
        target = torch.tensor([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        target = (1 - smoothing) * target + smoothing / 4
        expected = (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.t().log_softmax(1)).sum(1).mean()) / 2
        assert torch.allclose(head(visual, text), expected, atol=1e-5)
    text[1] = torch.randn(12)  # distinct answers: the spread target is no longer the loss
    assert not torch.allclose(head(visual, text), (-(target * head.similarity(visual, text).log_softmax(1)).sum(1).mean()
                                                    - (target * head.similarity(visual, text).t().log_softmax(1)).sum(1).mean()) / 2,
                              atol=1e-3)


def test_training_on_it_retrieves_the_matching_text():
    """Images whose class shows in one token among noise: the loss teaches retrieval of their class text."""
    torch.manual_seed(0)
    classes = torch.randn(6, 16)
    head = ImageTextContrastive(16, dim=8)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2)

    def sample(n):
        labels = torch.randint(0, 6, (n,))
        visual = torch.randn(n, 4, 16)
        visual[torch.arange(n), torch.randint(0, 4, (n,))] += 3 * classes[labels]
        return visual, classes[labels] + 0.1 * torch.randn(n, 16), labels

    def accuracy():
        visual, _, labels = sample(200)
        with torch.no_grad():
            return (head.similarity(visual, classes).argmax(1) == labels).float().mean().item()

    before = accuracy()
    for _ in range(150):
        visual, text, labels = sample(16)
        loss = head(visual, text)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before < 0.5 < 0.9 < accuracy()


def test_bad_shapes_and_temperatures_are_rejected():
    with pytest.raises(ValueError, match=r"temperature must lie in \[0.001, 0.5\]"):
        ImageTextContrastive(8, temperature=1.0)
    with pytest.raises(ValueError, match=r"visual \[B, K, H\] and text \[B, H\]"):
        ImageTextContrastive(8)(torch.randn(3, 8), torch.randn(3, 8))


def _batch(module, answers):
    samples = [Sample(str(i), torch.randn(3, 32, 32), "Describe the image.\n", [a]) for i, a in enumerate(answers)]
    return Collator(module.tokenizer, "caption", train=True)(samples)


def test_interface_adds_the_weighted_itc_loss_in_training_only(tmp_path, tiny_encoder, tiny_llm):
    torch.manual_seed(0)
    module = build("blip2", tiny_encoder, tiny_llm, stage="align", itc_weight=0.5,
                           connector={**TINY_QFORMER, "dropout": 0.0})
    batch = _batch(module, ["a red circle", "a red circle", "a blue square", "a teal triangle"])
    module.train()
    total = module.model.loss(batch)
    module.eval()
    language = module.model.loss(batch)  # evaluation: the language-modelling loss alone
    visual = module.model.perceive(batch.media)
    labels = batch.labels
    answer = (labels != -100).float().unsqueeze(-1)
    text = (module.model.llm.embed(labels.clamp(min=0)) * answer).sum(1) / answer.sum(1)
    itc = module.model.contrastive(visual, text)
    assert torch.allclose(total, language + 0.5 * itc, atol=1e-5)
    # its gradient reaches the connector and the ITC head, not the frozen backbones
    module.train()
    module.zero_grad()
    module.model.loss(batch).backward()
    assert module.model.contrastive.temperature.grad is not None and module.model.connector.qformer.queries.grad is not None
    assert all(p.grad is None for p in module.model.llm.parameters())
    # the next stage (no ITC) starts from such a checkpoint: the ITC head is left behind
    module.save_pretrained(tmp_path / "align")
    instruct = build("blip2", tiny_encoder, tiny_llm, stage="instruct", connector={**TINY_QFORMER, "dropout": 0.0},
                             init_from=str(tmp_path / "align"))
    assert instruct.model.contrastive is None
    assert torch.equal(instruct.model.connector.qformer.queries, module.model.connector.qformer.queries)
    with pytest.raises(ValueError, match="itc_weight must be >= 0"):
        build("blip2", tiny_encoder, tiny_llm, itc_weight=-1.0, connector=TINY_QFORMER)
