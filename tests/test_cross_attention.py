"""Gated cross-attention (DePALM c-attn): identity at initialisation, causal, trains only the
interface, generates the same batched, cached and alone, works with beam search."""

from __future__ import annotations

import pytest
import torch

from perceptlm.model import PerceptualLM
from perceptlm.data.collate import Collator, Sample
from perceptlm.injection.cross_attention import target_layers

PROMPTS = ["what shape?\n\nAnswer:\n", "is there a red shape in the image?\n\nAnswer:\n", "color?\n\nAnswer:\n"]


def _module(tiny_encoder, tiny_llm, **kw):
    module = PerceptualLM.build("depalm-c-attn", tiny_encoder, tiny_llm, **kw)
    assert module.encoder.layer_indices == [0, 1, 2, 3] and tiny_encoder.layer_indices == [3]  # a view
    return module


def _batch(module, train):
    samples = [Sample(str(i), torch.randn(3, 32, 32), p, ["circle"]) for i, p in enumerate(PROMPTS)]
    return Collator(module.tokenizer, "vqa", train=train)(samples)


def test_target_layers_follow_depalm_and_validate():
    assert target_layers(32, None, 0.5, 0.875, 1) == list(range(16, 28))  # layers 17-28 of 32
    assert target_layers(4, None, 0.5, 0.875, 1) == [2, 3]
    with pytest.raises(ValueError, match="beyond the LLM's depth 4"):
        target_layers(4, [1, 7], 0.5, 0.875, 1)


def test_identity_at_initialisation_and_trainable_count(tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm).eval()
    batch = _batch(module, train=False)
    ids, mask = batch.prompt_ids, batch.prompt_mask
    logits = module(batch.media, ids, mask)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    plain = tiny_llm.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert torch.allclose(logits[mask.bool()], plain[mask.bool()], atol=1e-5)
    D, H, X = 64, tiny_llm.hidden_size, 2
    W, n = D, 1
    expected = D * W + W + n * (6 * W * W + 10 * W) + W * H + H + X * (12 * H * H + 13 * H + 2)
    assert module.num_trainable_parameters == expected
    assert module.num_visual_tokens == 4 * 17


def test_training_changes_only_the_interface_and_leaves_identity(tiny_encoder, tiny_llm):
    probe = torch.tensor([[5, 6, 7, 8]])
    plain_before = tiny_llm.model(input_ids=probe).logits
    module = _module(tiny_encoder, tiny_llm)
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        module.loss(_batch(module, train=True)).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.endswith("_gate") for k in changed) and any(k.startswith("connector.") for k in changed)
    assert all(k.startswith(("connector.", "injection.")) for k in changed)
    # the blocks act only inside the module's forward: the LLM on its own is unchanged
    assert torch.equal(tiny_llm.model(input_ids=probe).logits, plain_before)


def test_causal_and_generation_equalities(tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm).eval()
    with torch.no_grad():
        for block in module.injection.blocks.values():  # open the gates so perception matters
            block.attention_gate.fill_(1.0)
            block.ffn_gate.fill_(0.5)
    batch = _batch(module, train=True)
    ids = batch.input_ids[:1].clone()
    mask = batch.attention_mask[:1]
    logits = module(batch.media[:1], ids, mask)
    ids[:, 5] = (ids[:, 5] + 3) % 200
    assert torch.allclose(logits[:, :5], module(batch.media[:1], ids, mask)[:, :5], atol=1e-6)
    blind = module.generate(batch.media[:1], batch.input_ids[:1, :4], batch.attention_mask[:1, :4],
                            max_new_tokens=3, blind=True)
    assert blind.shape[0] == 1

    evaluation = _batch(module, train=False)
    args = (evaluation.media, evaluation.prompt_ids, evaluation.prompt_mask)
    together = module.generate(*args, max_new_tokens=5)
    for i in range(len(PROMPTS)):
        keep = evaluation.prompt_mask[i].bool()
        alone = module.generate(evaluation.media[i : i + 1], evaluation.prompt_ids[i : i + 1, keep],
                                evaluation.prompt_mask[i : i + 1, keep], max_new_tokens=5)
        assert torch.equal(alone[0], together[i, : alone.shape[1]])
    media, ids, mask = evaluation.media[:1], evaluation.prompt_ids[:1], evaluation.prompt_mask[:1]
    cached = module.generate(media, ids, mask, max_new_tokens=4)
    for _ in range(4):
        step = module(media, ids, mask)[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, step], 1), torch.cat([mask, torch.ones_like(step)], 1)
    assert torch.equal(cached[0], ids[0, -4:][: cached.shape[1]])
    beams = module.generate(*args, max_new_tokens=4, num_beams=3)
    assert beams.shape[0] == 3


def test_flamingo_is_the_identity_at_initialisation(tiny_encoder, tiny_llm):
    module = PerceptualLM.build("flamingo", tiny_encoder, tiny_llm,
                           connector={"num_layers": 2, "num_queries": 8}).eval()
    assert module.injection.layer_indices == [0]  # every 4th layer of 4
    batch = _batch(module, train=False)
    ids, mask = batch.prompt_ids, batch.prompt_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    plain = tiny_llm.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert torch.allclose(module(batch.media, ids, mask)[mask.bool()], plain[mask.bool()], atol=1e-5)
    D = W = 64
    H, Q, n, C, X = tiny_llm.hidden_size, 8, 2, 2, 1
    expected = (2 * D + Q * W + 2 * W + n * (12 * W * W + 13 * W) + C * (2 * W * W + 2 * D * W + 6 * W)
                + W * H + H + X * (12 * H * H + 13 * H + 2))
    assert module.num_trainable_parameters == expected
