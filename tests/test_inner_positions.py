"""Inner injection as DePALM runs it: the K tokens prepended inside a target layer, the layer's
positions renumbered from 0 (tokens at 0..K-1, the text from K), the tokens dropped at its output.
perceptlm rotates the tokens' keys at -K..-1 instead and leaves the text's positions alone: the
logits must be the same."""

from __future__ import annotations

import torch

from perceptlm import zoo
from perceptlm.model import PerceptualLM


def depalm_reference(llm, tokens, ids, target):
    """DePALM's computation, written out: every layer on the text at positions 0..T-1, except the
    target layer, run on [tokens; text] at positions 0..K+T-1, its first K outputs dropped."""
    hidden = llm.embed(ids)
    rotary = llm.base.rotary_emb
    for index, layer in enumerate(llm.layers):
        states = torch.cat([tokens, hidden], dim=1) if index == target else hidden
        positions = torch.arange(states.shape[1])[None]
        out = layer(states, attention_mask=None, position_ids=positions,
                    position_embeddings=rotary(states, positions))
        out = out[0] if isinstance(out, tuple) else out
        hidden = out[:, tokens.shape[1]:] if index == target else out
    return llm.logits(llm.base.norm(hidden))


def test_inner_tokens_before_the_text_equal_depalms_renumbered_positions(tiny_encoder):
    llm = zoo.load_llm("test-tiny-llama")
    module = PerceptualLM.build("depalm-qp-inner", tiny_encoder, llm, prompt_tokens=0,
                                connector={"width": 32, "num_queries": 3},
                                injection_options={"layers": [2]}).eval()
    assert module.injection.key_positions == "before_text"
    media = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, 200, (2, 7))
    with torch.no_grad():
        module.injection.bias.normal_()  # tokens unlike any text
        visual = module.perceive(media)
        with module.injection.context(visual):
            tokens = module.injection.tokens(0)
        expected = depalm_reference(llm, tokens, ids, target=2)
        logits = module(media, ids, torch.ones_like(ids))
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-4)
    # without positions on the tokens' keys the scores differ: the rotation is what makes them equal
    module.injection.key_positions = "none"
    with torch.no_grad():
        assert not torch.allclose(module(media, ids, torch.ones_like(ids)), expected, atol=1e-3)


def test_rotation_is_a_no_op_for_learned_absolute_positions(tiny_encoder):
    """OPT adds its learned positions at the input only: the inserted tokens carry none inside a
    layer, in DePALM as here."""
    from perceptlm.injection.inner import rotate_before_text

    llm = zoo.load_llm("test-tiny-opt")
    keys = torch.randn(2, 4, 3, 16)
    assert torch.equal(rotate_before_text(llm, llm.layers[0], keys), keys)
