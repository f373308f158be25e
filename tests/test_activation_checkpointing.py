"""Activation checkpointing of the frozen LLM's decoder layers: the same loss and gradients as
without, for every injection kind (prefix, per-layer keys/values, cross-attention blocks), less
memory kept for the backward pass, and plain layers when no gradient is recorded."""

from __future__ import annotations

import copy

import pytest
import torch
from test_presets import build, encoder_for, make_batch

from perceptlm import presets
from perceptlm.model import PerceptualLM

# one preset per injection kind: prefix, inner keys/values (+ gates, + prompts), cross-attention
PRESETS = ["depalm-qp-l0", "depalm-qp-inner", "epalm", "llama-adapter", "depalm-c-attn", "flamingo"]


def _saved_bytes(model: PerceptualLM, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Loss, trainable gradients and the bytes autograd keeps for the backward pass."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same dropout masks (checkpointing replays the RNG state it saw)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model.loss(batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return loss.detach(), grads, sum(saved)


@pytest.mark.parametrize("name", PRESETS)
def test_same_loss_and_gradients_with_checkpointing(name, tiny_encoder, tiny_llm):
    assert presets.get(name).injection in ("prefix", "inner", "cross_attention", "shared_cross_attention")
    torch.manual_seed(0)
    plain = build(name, encoder_for(name, tiny_encoder), copy.deepcopy(tiny_llm)).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.llm.enable_activation_checkpointing(checkpointed.injection.replay)
    batch = make_batch(plain)
    loss, grads, kept = _saved_bytes(plain, batch)
    loss_ckpt, grads_ckpt, kept_ckpt = _saved_bytes(checkpointed, batch)
    assert torch.allclose(loss, loss_ckpt, atol=1e-6), (loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys() and grads
    for key in grads:
        assert torch.allclose(grads[key], grads_ckpt[key], atol=1e-6, rtol=1e-5), key
    assert kept_ckpt < kept, (kept_ckpt, kept)  # the layers' activations are not kept (the connector's are)


@pytest.mark.parametrize("name", PRESETS)
def test_a_deep_copy_keeps_its_injection(name, tiny_encoder, tiny_llm):
    """A deep copy of a model (what EMA, sweeps or a checkpointing A/B take) injects through its own
    copied LLM: per-layer sources are keyed by module identity and hooks are bound to the injection,
    so before the fix a copy silently ran the plain LLM."""
    model = build(name, encoder_for(name, tiny_encoder), copy.deepcopy(tiny_llm)).train()
    twin = copy.deepcopy(model)
    batch = make_batch(model)
    losses = []
    for candidate in (model, twin):
        torch.manual_seed(0)
        losses.append(candidate.loss(batch).item())
    assert losses[0] == losses[1]
    with torch.no_grad():  # the copy's injection is what changes its output, not the original's
        for parameter in twin.injection.parameters():
            parameter.add_(1.0)
        if not list(twin.injection.parameters()):
            for parameter in twin.connector.parameters():
                parameter.add_(1.0)
    torch.manual_seed(0)
    assert twin.loss(batch).item() != losses[0]
    torch.manual_seed(0)
    assert model.loss(batch).item() == losses[0]


def test_recomputation_needs_the_injections_tokens(tiny_encoder, tiny_llm):
    """Without the replay of the injection's tokens, a per-layer injection's recomputed layer would
    differ from its forward (the context has exited by the backward pass): checkpointing refuses."""
    model = build("depalm-qp-inner", encoder_for("depalm-qp-inner", tiny_encoder), copy.deepcopy(tiny_llm)).train()
    model.llm.enable_activation_checkpointing(replay=None)
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        model.loss(make_batch(model)).backward()


def test_option_through_build_and_no_recomputation_without_gradients(tiny_encoder, tiny_llm):
    model = PerceptualLM.build("epalm", tiny_encoder, copy.deepcopy(tiny_llm), features={"layers": 4},
                               llm_activation_checkpointing=True)
    assert model.llm.activation_checkpointing and model.build_arguments()["llm_activation_checkpointing"]
    batch = make_batch(model, train=False)
    calls = []
    original = torch.utils.checkpoint.checkpoint
    torch.utils.checkpoint.checkpoint = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with torch.no_grad():
            model.generate(batch.media, batch.prompt_ids, batch.prompt_mask, max_new_tokens=2)
        assert not calls  # decoding runs the layers as they are
        model.train()
        model.loss(make_batch(model)).backward()
        assert len(calls) == model.llm.num_layers
    finally:
        torch.utils.checkpoint.checkpoint = original
    twin = copy.deepcopy(model)  # the wrapped forward follows the copy's own layer
    layer = twin.llm.layers[0]
    assert layer.forward.__self__ is layer and layer._perceptlm_replay.__self__ is twin.injection


@pytest.mark.parametrize("name", ["depalm-qp-l0", "depalm-c-attn"])
def test_compiled_layers_inside_the_checkpoint(name, tiny_encoder, tiny_llm):
    """With compile_llm the layer's own forward is compiled inside the checkpoint (dynamo cannot
    trace a checkpoint with a replay context): the eager loss and gradients ("aot_eager" backend:
    the compiled graph without inductor's code generation)."""
    torch.manual_seed(0)
    plain = build(name, encoder_for(name, tiny_encoder), copy.deepcopy(tiny_llm)).train()
    compiled = copy.deepcopy(plain)
    compiled.llm.enable_activation_checkpointing(compiled.injection.replay)
    compiled.llm.compile_layers(backend="aot_eager")
    assert all(layer._perceptlm_forward is not None for layer in compiled.llm.layers)
    batch = make_batch(plain)
    loss, grads, _ = _saved_bytes(plain, batch)
    loss_compiled, grads_compiled, _ = _saved_bytes(compiled, batch)
    assert torch.allclose(loss, loss_compiled, atol=1e-6)
    assert all(torch.allclose(grads[k], grads_compiled[k], atol=1e-6) for k in grads)
    with pytest.raises(ValueError, match="before compile_layers"):
        plain.llm.compile_layers(backend="aot_eager")
        plain.llm.enable_activation_checkpointing(plain.injection.replay)


def test_compile_refuses_per_layer_key_values(tiny_encoder, tiny_llm):
    with pytest.raises(ValueError, match="compile_llm is not supported with the 'inner' injection of 'epalm'"):
        PerceptualLM.build("epalm", tiny_encoder, copy.deepcopy(tiny_llm), features={"layers": 4}, compile_llm=True)
