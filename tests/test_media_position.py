"""The perceptual prefix at the ``<image>`` placeholder's position (``media_position``), as LLaVA
places it: after the system prompt and the start of the user turn, not before all text."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perceptlm.model import PerceptualLM
from perceptlm.batch import Batch


@pytest.fixture
def module(tiny_encoder, tiny_llm):
    return PerceptualLM.build("depalm-qp-l0", tiny_encoder, tiny_llm).eval()  # eval: no dropout


def _manual_hidden(module, image, ids, position):
    """The LLM's hidden states over ``[text[:p]; prefix; text[p:]]``, built by hand for one row."""
    visual = module.perceive(image)
    prefix = module.prefix(visual)
    text = module.llm.embed(ids)
    embeds = torch.cat([text[:, :position], prefix, text[:, position:]], dim=1)
    hidden, _ = module.llm.hidden(embeds, torch.ones(embeds.shape[:2], dtype=torch.long))
    return hidden, prefix.shape[1]


def test_forward_and_loss_place_the_prefix_at_the_media_position(module):
    torch.manual_seed(1)
    image, ids = torch.randn(1, 3, 32, 32), torch.randint(3, 200, (1, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 8:] = ids[0, 8:]
    position = 5
    hidden, k = _manual_hidden(module, image, ids, position)
    text_hidden = torch.cat([hidden[:, :position], hidden[:, position + k:]], dim=1)
    logits = module(image, ids, torch.ones_like(ids), media_position=torch.tensor([position]))
    torch.testing.assert_close(logits, module.llm.logits(text_hidden), atol=1e-5, rtol=1e-5)
    # the loss: token t is predicted from the position just before it in the combined sequence
    expected = F.cross_entropy(module.llm.logits(hidden[:, position + k + 2 : position + k + 6]).flatten(0, 1).float(),
                               ids[0, 8:], label_smoothing=module.label_smoothing)
    batch = Batch(ids=["0"], task="vqa", media=image, prompts=[""], sources=[None], input_ids=ids,
                  attention_mask=torch.ones_like(ids), labels=labels, media_position=torch.tensor([position]))
    torch.testing.assert_close(module.loss(batch), expected, atol=1e-5, rtol=1e-5)


def test_text_before_the_media_does_not_see_it(module):
    torch.manual_seed(2)
    ids = torch.randint(3, 200, (1, 10))
    where = torch.tensor([4])
    a = module(torch.randn(1, 3, 32, 32), ids, torch.ones_like(ids), media_position=where)
    b = module(torch.randn(1, 3, 32, 32), ids, torch.ones_like(ids), media_position=where)
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=0, rtol=0)
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-4


def test_position_zero_is_the_plain_prefix(module):
    torch.manual_seed(3)
    image, ids = torch.randn(2, 3, 32, 32), torch.randint(3, 200, (2, 9))
    plain = module(image, ids, torch.ones_like(ids))
    torch.testing.assert_close(module(image, ids, torch.ones_like(ids), media_position=torch.tensor([0, 0])), plain)


def test_batched_left_padded_generation_with_positions_equals_each_row_alone(module):
    torch.manual_seed(4)
    pad = module.tokenizer.pad_token_id
    rows = [torch.randint(3, 200, (n,)) for n in (9, 6, 7)]
    positions = [3, 0, 7]
    images = torch.randn(3, 3, 32, 32)
    width = max(len(r) for r in rows)
    ids = torch.full((3, width), pad, dtype=torch.long)
    mask = torch.zeros((3, width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    shifted = torch.tensor([p + width - len(r) for p, r in zip(positions, rows)])
    batched = module.generate(images, ids, mask, max_new_tokens=6, num_beams=1, media_position=shifted)
    for i, row in enumerate(rows):
        alone = module.generate(images[i : i + 1], row[None], torch.ones_like(row[None]), max_new_tokens=6,
                                num_beams=1, media_position=torch.tensor([positions[i]]))
        n = alone.shape[1]
        assert batched[i, :n].tolist() == alone[0].tolist()
