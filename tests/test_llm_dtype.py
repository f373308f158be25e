"""The frozen LLM's dtype (``llm_dtype``): loaded in it from the zoo, trainable parts float32, the
boundary casts of every injection kind, the 7B geometry's weight memory, and the refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from test_presets import build, encoder_for, make_batch

from perceptlm import zoo
from perceptlm.model import PerceptualLM
from perceptlm.training import InterfaceModule

PRESETS = ["depalm-qp-l0", "depalm-qp-inner", "depalm-c-attn", "flamingo", "mplug-owl"]  # + LoRA (mplug-owl)


@pytest.mark.parametrize("name", PRESETS)
def test_bfloat16_llm_trains_float32_parts_without_autocast(name, tiny_encoder):
    torch.manual_seed(0)
    full = build(name, encoder_for(name, tiny_encoder), "test-tiny-llama").train()
    torch.manual_seed(0)
    half = build(name, encoder_for(name, tiny_encoder), "test-tiny-llama", llm_dtype="bfloat16").train()
    half.load_state_dict(full.state_dict())  # the same weights, the LLM's rounded to bfloat16
    assert half.llm.dtype == torch.bfloat16 and full.llm.dtype == torch.float32
    frozen = [p for p in half.llm.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    trainable = [p for p in half.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # LoRA adapters included
    batch = make_batch(full)
    losses = []
    for model in (full, half):
        torch.manual_seed(0)
        loss = model.loss(batch)
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], abs=0.05)  # bfloat16 rounding, not another computation
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable if p.grad is not None)
    assert sum(p.grad is not None for p in trainable) == sum(p.grad is not None for p in full.parameters() if p.requires_grad)
    batch = make_batch(half, train=False)
    with torch.no_grad():
        tokens = half.generate(batch.media, batch.prompt_ids, batch.prompt_mask, max_new_tokens=3)
    assert tokens.shape[0] == 2


def test_seven_billion_geometry_weights_in_bfloat16():
    """The CLI path (InterfaceModule -> PerceptualLM.build -> zoo) at LLaMA-7B's shape: 2 bytes per
    frozen LLM parameter (within 5 %), on the meta device."""
    module = InterfaceModule(preset="depalm-qp-l0", encoder="test-tiny-vit", llm="geometry:huggyllama/llama-7b",
                             llm_dtype="bfloat16")
    llm = module.model.llm
    count = sum(p.numel() for p in llm.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in llm.parameters())
    assert 6.5e9 < count < 7e9 and abs(weight_bytes / (2 * count) - 1) < 0.05
    assert module.hparams.llm_dtype == "bfloat16"
    assert all(p.dtype == torch.float32 for p in module.model.parameters() if p.requires_grad)


def test_dtype_names_and_refusals(tiny_llm):
    assert zoo.llm_dtype("float32") is torch.float32 and zoo.llm_dtype("bfloat16") is torch.bfloat16
    assert zoo.llm_dtype("auto") is (torch.bfloat16 if torch.cuda.is_available() and
                                     torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32)
    with pytest.raises(ValueError, match="llm_dtype='fp8' is unknown; valid: auto, float32, bfloat16, float16"):
        zoo.llm_dtype("fp8")
    with pytest.raises(ValueError, match="llm_tuning='full' trains test-tiny-llama's own weights"):
        PerceptualLM.build("depalm-qp-l0", "test-tiny-vit", "test-tiny-llama", llm_tuning="full", llm_dtype="bfloat16")
    with pytest.raises(ValueError, match="the LLM passed in \\(test-tiny-llama\\) is torch.float32"):
        PerceptualLM.build("depalm-qp-l0", "test-tiny-vit", tiny_llm, llm_dtype="bfloat16")
    norms = PerceptualLM.build("depalm-qp-l0", "test-tiny-vit", "test-tiny-llama", llm_tuning="norms")
    assert norms.llm.dtype == torch.float32  # trained LLM weights stay float32


def test_rebuilt_model_asks_the_same_dtype(tmp_path, tiny_encoder):
    model = PerceptualLM.build("depalm-qp-l0", tiny_encoder, "test-tiny-llama", llm_dtype="bfloat16")
    model.save_pretrained(tmp_path)
    again = PerceptualLM.from_pretrained(tmp_path, encoder=copy.deepcopy(tiny_encoder))
    assert again.llm.dtype == torch.bfloat16 and again.build_arguments()["llm_dtype"] == "bfloat16"
