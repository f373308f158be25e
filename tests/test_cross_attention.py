"""Cross-attention injections. DePALM's c-attn (one shared block): identity at initialisation,
causal, trains only the interface, generates the same batched, cached and alone, works with beam
search; Flamingo's per-layer blocks: identity at initialisation."""

from __future__ import annotations

import pytest
import torch

from perceptlm.model import PerceptualLM
from perceptlm.data.collate import Collator, Sample
from perceptlm.injection.base import target_layers
from perceptlm.injection.shared_cross_attention import SharedCrossAttention

PROMPTS = ["what shape?\n\nAnswer:\n", "is there a red shape in the image?\n\nAnswer:\n", "color?\n\nAnswer:\n"]
WIDTH = 32  # the block's and the mapper's width (DePALM: 1024)


def _module(tiny_encoder, tiny_llm, **kw):
    kw.setdefault("connector", {"width": WIDTH})
    kw.setdefault("injection_options", {"width": WIDTH})
    module = PerceptualLM.build("depalm-c-attn", tiny_encoder, tiny_llm, **kw)
    assert module.encoder.layer_indices == [0, 1, 2, 3] and tiny_encoder.layer_indices == [3]  # a view
    return module


def _batch(module, train):
    samples = [Sample(str(i), torch.randn(3, 32, 32), p, ["circle"]) for i, p in enumerate(PROMPTS)]
    return Collator(module.tokenizer, "vqa", train=train)(samples)


def test_target_layers_follow_depalm_and_validate():
    assert target_layers(32, start=17 / 32, end=29 / 32) == list(range(17, 29))  # DePALM's 0-based 17-28
    assert target_layers(32, last=-4, count=12) == list(range(17, 29))  # its to_idx -4, 12 layers
    assert target_layers(32, last=-4, count=6) == list(range(23, 29))  # eP-ALM
    assert target_layers(30, start=17 / 32, end=29 / 32) == list(range(15, 27))  # the same share of 30 layers
    assert target_layers(4, start=17 / 32, end=29 / 32) == [2, 3]
    with pytest.raises(ValueError, match="beyond the LLM's depth 4"):
        target_layers(4, [1, 7])
    with pytest.raises(ValueError, match="do not fit"):
        target_layers(8, last=-4, count=12)


def test_identity_at_initialisation_and_trainable_count(tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm, prompt_tokens=0).eval()  # the 16 prompt tokens aside
    batch = _batch(module, train=False)
    ids, mask = batch.prompt_ids, batch.prompt_mask
    logits = module(batch.media, ids, mask)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    plain = tiny_llm.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert torch.allclose(logits[mask.bool()], plain[mask.bool()], atol=1e-5)
    D, H, W, V, n, P = 64, tiny_llm.hidden_size, WIDTH, WIDTH, 1, 16
    connector = D * W + W + n * (6 * W * W + 10 * W) + W * V + V
    block = H * V + V + V * V + V + V + 3 * (V * V + V) + V + V * H + H + 1  # ONE block, whatever the layers
    assert _module(tiny_encoder, tiny_llm).num_trainable_parameters == connector + block + P * H
    assert module.num_visual_tokens == 17  # per encoder layer: every token of the 4x4 grid + CLS
    assert module.injection.layer_indices == [2, 3]
    assert len([m for m in module.injection.modules() if isinstance(m, SharedCrossAttention)]) == 1


def test_one_block_serves_each_layer_with_its_encoder_layer(tiny_encoder):
    from perceptlm import zoo

    llm = zoo.load_llm("test-tiny-llama", num_hidden_layers=8)
    module = _module(tiny_encoder, llm, prompt_tokens=0).eval()
    assert module.injection.layer_indices == [4, 5, 6]  # 17/32-29/32 of 8 layers
    batch = _batch(module, train=False)
    visual = module.perceive(batch.media)
    assert visual.shape == (3, 4, 17, WIDTH)  # the mapper runs per encoder layer, at the block's width
    seen = []
    block = module.injection.block
    block.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    with torch.no_grad():
        block.gate.fill_(1.0)
        module(batch.media, batch.prompt_ids, batch.prompt_mask)
    # 4 encoder layers over 3 target layers in proportion: encoder layers 0, 1, 2
    keys = [block.key_values(visual[:, e])[0] for e in (0, 1, 2)]
    assert len(seen) == 3 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(seen, keys))


def test_the_block_is_multi_head_attention_position_by_position():
    """Each position's output depends on its own hidden state only (no leak across positions, the
    released code's reshaping defect); dropout acts in training only."""
    torch.manual_seed(0)
    block = SharedCrossAttention(hidden=16, width=8, num_heads=2, dropout=0.5).eval()
    with torch.no_grad():
        block.gate.fill_(1.0)
    hidden, visual = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    keys, values = block.key_values(visual)
    out = block(hidden, keys, values)
    changed = hidden.clone()
    changed[:, 3:] += 1.0
    assert torch.allclose(block(changed, keys, values)[:, :3], out[:, :3])
    q = block.q_proj(block.query_mlp(hidden)).view(2, 5, 2, 4).transpose(1, 2)
    k, v = block.k_proj(visual).view(2, 3, 2, 4).transpose(1, 2), block.v_proj(visual).view(2, 3, 2, 4).transpose(1, 2)
    attended = (torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v).transpose(1, 2).reshape(2, 5, 8)
    assert torch.allclose(out, hidden + torch.tanh(torch.tensor(1.0)) * block.out_proj(block.norm(attended)), atol=1e-6)
    assert torch.equal(block(hidden, keys, values), out)  # evaluation: no dropout
    block.train()
    assert not torch.allclose(block(hidden, keys, values), out)  # training: attention dropout


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
    assert "injection.block.gate" in changed and any(k.startswith("connector.") for k in changed)
    assert all(k.startswith(("connector.", "injection.", "prompt.")) for k in changed)
    # the block acts only inside the module's forward: the LLM on its own is unchanged
    assert torch.equal(tiny_llm.model(input_ids=probe).logits, plain_before)


def test_causal_and_generation_equalities(tiny_encoder, tiny_llm):
    module = _module(tiny_encoder, tiny_llm).eval()
    with torch.no_grad():
        module.injection.block.gate.fill_(1.0)  # open the gate so perception matters
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
