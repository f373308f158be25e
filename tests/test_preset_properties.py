"""Properties every preset must have, checked over every preset on tiny backbones: causality,
identity at initialisation for the gated mechanisms, only the intended parameters train, batched /
cached / single generation agree and beam search runs, and the per-layer mechanisms work on every
supported LLM family (Llama, Qwen2, Mistral, OPT, GPT-2). Which presets are gated or per-layer is read
from their files; the checks are functions, so a preset from a user's folder runs through them too."""

from __future__ import annotations

import copy

import pytest
import torch

from test_presets import formula_value, tiny_overrides

from perceptlm.model import PerceptualLM
from perceptlm import presets, zoo
from perceptlm.data.collate import Collator, Sample

PROMPTS = ["what shape?\n\nAnswer:\n", "is there a red shape in the image?\n\nAnswer:\n", "color?\n\nAnswer:\n"]
ANSWERS = ["circle", "no", "teal"]
ALL = presets.names()


def gated(preset: presets.Preset) -> bool:
    """Zero-initialised tanh gates: gated cross-attention blocks, LLaMA-Adapter's gated prompts."""
    return preset.injection == "cross_attention" or bool(preset.injection_options.get("gated"))


GATED = [name for name in ALL if gated(presets.get(name))]
# every per-layer injection, and one L0 preset, on each LLM family
PER_LAYER = [name for name in ALL if presets.get(name).injection != "prefix"]
PER_LAYER += [name for name in ALL if presets.get(name).injection == "prefix"][:1]


def build(name, encoder, llm):
    return PerceptualLM.build(name, encoder, llm, **tiny_overrides(presets.get(name)))


def batch(module, train, prompts=PROMPTS):
    samples = [Sample(str(i), torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)), p, [a])
               for i, (p, a) in enumerate(zip(prompts, ANSWERS))]
    return Collator(module.tokenizer, "vqa", train=train)(samples)


def open_gates(module):
    """Gated mechanisms are the identity at initialisation: open them so perception matters."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith(("gate", "gates")):
                parameter.fill_(0.7)
    return module


def plain_logits(llm, ids, mask):
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return llm.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def check_causal(module):
    b = batch(module, train=True)
    ids, mask, media = b.input_ids[:1].clone(), b.attention_mask[:1], b.media[:1]
    logits = module(media, ids, mask)
    t = ids.shape[1] // 2
    ids[:, t + 1] = (ids[:, t + 1] + 7) % 200
    changed = module(media, ids, mask)
    assert torch.allclose(logits[:, : t + 1], changed[:, : t + 1], atol=1e-6)
    assert not torch.allclose(logits[:, t + 1 :], changed[:, t + 1 :])


def check_generation(module):
    e = batch(module, train=False)
    media, ids, mask = e.media, e.prompt_ids, e.prompt_mask
    together = module.generate(media, ids, mask, max_new_tokens=5, num_beams=1)
    for i in range(len(PROMPTS)):  # left-padded batch == each sample alone
        keep = mask[i].bool()
        alone = module.generate(media[i : i + 1], ids[i : i + 1, keep], mask[i : i + 1, keep], max_new_tokens=5, num_beams=1)
        assert torch.equal(alone[0], together[i, : alone.shape[1]])
    one, one_ids, one_mask = media[:1], ids[:1], mask[:1]
    cached = module.generate(one, one_ids, one_mask, max_new_tokens=4, num_beams=1)
    for _ in range(cached.shape[1]):  # KV-cached greedy == the full forward at every step
        step = module(one, one_ids, one_mask)[:, -1].argmax(-1, keepdim=True)
        one_ids, one_mask = torch.cat([one_ids, step], 1), torch.cat([one_mask, torch.ones_like(step)], 1)
    assert torch.equal(cached[0], one_ids[0, one_ids.shape[1] - cached.shape[1] :])
    beams = module.generate(media, ids, mask, max_new_tokens=4, num_beams=3)
    assert beams.shape[0] == len(PROMPTS) and 1 <= beams.shape[1] <= 4


@pytest.mark.parametrize("name", ALL)
def test_causal(name, tiny_encoder, tiny_llm):
    check_causal(open_gates(build(name, tiny_encoder, tiny_llm).eval()))


@pytest.mark.parametrize("name", ALL)
def test_generation_batched_cached_and_beam(name, tiny_encoder, tiny_llm):
    check_generation(open_gates(build(name, tiny_encoder, tiny_llm).eval()))


@pytest.mark.parametrize("name", GATED)
def test_gated_mechanisms_are_the_identity_at_initialisation(name, tiny_encoder, tiny_llm):
    module = build(name, tiny_encoder, tiny_llm).eval()
    e = batch(module, train=False)
    ids, mask = e.prompt_ids, e.prompt_mask
    plain = plain_logits(tiny_llm, ids, mask)
    assert torch.allclose(module(e.media, ids, mask)[mask.bool()], plain[mask.bool()], atol=1e-5)
    opened = open_gates(module)(e.media, ids, mask)
    assert not torch.allclose(opened[mask.bool()], plain[mask.bool()], atol=1e-3)  # the gates do act


def check_step(module):
    """Two optimizer steps change the interface only, never the frozen backbones."""
    module.train()
    assert not module.encoder.training and not module.llm.training
    frozen = {k for k, p in module.named_parameters() if not p.requires_grad}
    before = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # zero-initialised gates let gradients reach the rest on the second step
        optimizer.zero_grad()
        module.loss(batch(module, train=True)).backward()
        optimizer.step()
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    intended = ("connector.", "prompt.", "injection.") + (("llm.",) if module.preset.llm_tuning == "lora" else ())
    assert changed and all(k.startswith(intended) for k in changed), sorted(changed - {k for k in changed if k.startswith(intended)})
    assert all("lora_" in k for k in changed if k.startswith("llm."))
    assert not changed & frozen  # encoder, LLM (and a frozen Q-Former) are bit-identical
    trainable = {k for k, p in module.named_parameters() if p.requires_grad}
    assert trainable <= module.trainable_keys()  # and they are what checkpoints hold


def check_formula(module):
    """The trainable count equals the preset file's ``trainable_formula``."""
    targets = len(getattr(module.injection, "layer_indices", []))
    value = formula_value(module.preset, module.encoder.embed_dim, module.llm.hidden_size, module.llm, targets)
    assert module.num_trainable_parameters == value


@pytest.mark.parametrize("name", ALL)
def test_a_step_changes_only_the_intended_parameters(name, tiny_encoder, tiny_llm):
    check_step(build(name, copy.deepcopy(tiny_encoder), copy.deepcopy(tiny_llm)))


@pytest.mark.parametrize("family", ["test-tiny-qwen2", "test-tiny-mistral", "test-tiny-opt", "test-tiny-gpt2"])
@pytest.mark.parametrize("name", PER_LAYER)
def test_llm_families(name, family, tiny_encoder):
    llm = zoo.load_llm(family)
    module = build(name, tiny_encoder, llm).eval()
    if name in GATED:
        e = batch(module, train=False)
        plain = plain_logits(llm, e.prompt_ids, e.prompt_mask)
        mask = e.prompt_mask.bool()
        assert torch.allclose(module(e.media, e.prompt_ids, e.prompt_mask)[mask], plain[mask], atol=1e-5)
    open_gates(module)
    check_causal(module)
    check_generation(module)


def test_inner_injection_spreads_encoder_layers_and_maps_each_once(tiny_encoder, tiny_llm):
    llm = zoo.load_llm("test-tiny-llama", num_hidden_layers=8)
    module = PerceptualLM.build("depalm-qp-inner", tiny_encoder, llm, connector={"width": 32, "num_queries": 4}).eval()
    assert module.injection.layer_indices == [4, 5, 6]  # 17/32-29/32 of 8 layers
    calls = []
    module.connector.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    e = batch(module, train=False)
    visual = module.perceive(e.media)
    assert visual.shape == (3, 4, 4, llm.hidden_size) and calls == [(12, 4, llm.hidden_size)]  # one pass, 4 layers folded
    with module.injection.context(visual):
        assert [module.injection.tokens(s).shape[1] for s in range(3)] == [4, 4, 4]
        # 4 encoder layers over 3 LLM layers in proportion: layers 0, 1, 2 of the 4
        expected = [visual[:, 0], visual[:, 1], visual[:, 2]]
        for slot, tokens in enumerate(expected):
            injection = module.injection
            with torch.no_grad():  # DePALM's per-layer RMSNorm (eps 1e-4, with a weight), scale and bias
                injection.norm_weight[slot].uniform_(0.5, 1.5)
                injection.bias[slot].normal_()
            normed = torch.nn.functional.rms_norm(tokens, (llm.hidden_size,), eps=1e-4) * injection.norm_weight[slot]
            assert torch.allclose(injection.tokens(slot), normed * injection.scale[slot] + injection.bias[slot])


@pytest.mark.parametrize("name", ALL)
def test_trainable_count_matches_the_documented_formula(name, tiny_encoder, tiny_llm):
    check_formula(build(name, tiny_encoder, tiny_llm))
