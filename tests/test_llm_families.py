"""Decoder-only families outside the adapter table, read from transformers' module layout: every
family's logits through perceptlm's path equal its own forward's, and a prefix, a per-layer
key/value and a cross-attention preset train on it (or the per-layer one is refused by name)."""

from __future__ import annotations

import pytest
import torch
from test_presets import build, encoder_for, make_batch

from perceptlm import zoo
from perceptlm.llm import ADAPTERS, adapter_for

# family -> per-layer keys/values served (False: refused, with the reason in the error)
FAMILIES = {"qwen3": True, "gemma3_text": True, "granite": True, "smollm3": True, "cohere": True, "starcoder2": True,
            "glm": True, "helium": True, "olmo2": False, "phi3": False}
PRESETS = ("depalm-qp-l0", "depalm-qp-inner", "depalm-c-attn")


@pytest.fixture(scope="module")
def families():
    return {family: zoo.load_llm(f"test-tiny-{family}") for family in FAMILIES}


def test_families_beyond_the_table_and_their_logits(families):
    assert len(set(FAMILIES) - {"qwen3", "olmo2", "phi3"} - set(ADAPTERS)) >= 6  # discovered, not listed
    for family, llm in families.items():
        assert llm.config.model_type == family and llm.num_layers == 4
        assert llm.adapter.key_values_supported == FAMILIES[family], family
        embeds = torch.randn(2, 5, llm.hidden_size)
        mask = torch.ones(2, 5, dtype=torch.long)
        with torch.no_grad():
            hidden, _ = llm.hidden(embeds, mask)
            own = llm.model(inputs_embeds=embeds, attention_mask=mask).logits
        assert torch.allclose(llm.logits(hidden), own, atol=1e-5), family  # softcapping, logit scales included


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_presets_train_on_every_family(family, families, tiny_encoder):
    llm = families[family]
    for name in PRESETS:
        if name == "depalm-qp-inner" and not FAMILIES[family]:
            with pytest.raises(ValueError, match="per-layer key/value injection is not supported .* prefix and "
                                                 "cross-attention presets work on it"):
                model = build(name, encoder_for(name, tiny_encoder), llm)
                model.loss(make_batch(model))
            continue
        model = build(name, encoder_for(name, tiny_encoder), llm).train()
        loss = model.loss(make_batch(model))
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert torch.isfinite(loss) and grads and all(g is not None and torch.isfinite(g).all() for g in grads), (family, name)
        assert any(g.abs().sum() > 0 for g in grads)


def test_an_undiscoverable_model_is_named():
    from torch import nn

    class Odd(nn.Module):
        pass

    with pytest.raises(ValueError, match="model_type='odd' \\(Odd\\): no decoder-layer list at base_model"):
        adapter_for("odd", Odd())
