"""Two-stage systems: the preset's align/instruct recipes, initialisation of stage 2 from stage 1."""

from __future__ import annotations

import pytest
import torch

from perceptlm import build

TINY_QFORMER = {"width": 64, "num_layers": 2, "num_heads": 4, "num_queries": 4}


def test_llava_aligns_the_projector_then_tunes_the_llm(tmp_path, tiny_encoder, tiny_llm):
    align = build("llava", tiny_encoder, tiny_llm, stage="align")
    assert align.model.preset.llm_tuning == "frozen"
    assert {k.split(".")[1] for k, p in align.named_parameters() if p.requires_grad} == {"connector"}
    with torch.no_grad():
        align.model.connector.output[0].weight.add_(1.0)  # "trained"
    align.save_pretrained(tmp_path / "align")
    instruct = build("llava", tiny_encoder, tiny_llm, stage="instruct", init_from=str(tmp_path / "align"))
    assert instruct.model.preset.llm_tuning == "full" and instruct.model.llm is not tiny_llm  # the caller's LLM untouched
    assert torch.equal(instruct.model.connector.output[0].weight, align.model.connector.output[0].weight)
    assert all(p.requires_grad for p in instruct.model.llm.parameters())
    assert not any(p.requires_grad for p in tiny_llm.parameters())
    # LLaVA's stage 2 tunes the LLM at 2e-5 while the projector keeps the run's learning rate
    from lightning.pytorch import Trainer

    instruct.trainer = Trainer(max_steps=10, logger=False, enable_checkpointing=False)
    groups = instruct.configure_optimizers()["optimizer"].param_groups
    llm_ids = {id(p) for p in instruct.model.llm.parameters()}
    rates = {("llm" if id(g["params"][0]) in llm_ids else "connector", g["weight_decay"] > 0): g["initial_lr"] for g in groups}
    assert rates == {("llm", True): 2e-5, ("llm", False): 2e-5, ("connector", True): 8e-4, ("connector", False): 8e-4}
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in instruct.parameters())
    lora = build("llava", tiny_encoder, tiny_llm, stage="instruct", llm_tuning="lora",
                         init_from=str(tmp_path / "align"))  # the study's frozen / LoRA / full ablation
    assert lora.model.preset.llm_tuning == "lora"


def test_mplug_owl_freezes_its_abstractor_in_stage_two(tmp_path, tiny_encoder, tiny_llm):
    align = build("mplug-owl", tiny_encoder, tiny_llm, stage="align", connector=TINY_QFORMER)
    assert align.model.preset.llm_tuning == "frozen"
    checkpoint = tmp_path / "align.ckpt"
    torch.save({"state_dict": {k: v for k, v in align.state_dict().items() if k.removeprefix("model.") in align.model.trainable_keys()}}, checkpoint)
    instruct = build("mplug-owl", tiny_encoder, tiny_llm, stage="instruct", connector=TINY_QFORMER,
                             init_from=str(checkpoint))
    trainable = {k for k, p in instruct.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    instruct.train()
    assert not instruct.model.connector.training  # frozen: no dropout either
    assert torch.equal(instruct.model.connector.qformer.queries, align.model.connector.qformer.queries)


def test_instructblip_starts_from_a_blip2_alignment(tmp_path, tiny_encoder, tiny_llm):
    blip2 = build("blip2", tiny_encoder, tiny_llm, stage="align", connector=TINY_QFORMER)
    blip2.save_pretrained(tmp_path / "blip2")
    module = build("instructblip", tiny_encoder, tiny_llm, stage="instruct", connector=TINY_QFORMER,
                           init_from=str(tmp_path / "blip2"))
    assert torch.equal(module.model.connector.qformer.queries, blip2.model.connector.qformer.queries)
    assert module.model.connector.instruction is not None  # new in this stage, left at its initialisation


def test_stage_errors_name_the_valid_choices(tmp_path, tiny_encoder, tiny_llm):
    with pytest.raises(ValueError, match=r"no stage 'pretrain'; valid: \['align', 'instruct'\]"):
        build("llava", tiny_encoder, tiny_llm, stage="pretrain")
    with pytest.raises(ValueError, match="has no stage recipes; presets with stages: blip2"):
        build("limber-1", tiny_encoder, tiny_llm, stage="align")
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        build("llava", tiny_encoder, tiny_llm, init_from=str(tmp_path / "missing.ckpt"))
    other = build("mapl", tiny_encoder, tiny_llm, connector={"width": 32, "num_queries": 4})
    other.save_pretrained(tmp_path / "mapl")
    with pytest.raises(ValueError, match="shapes differ"):  # mapl's output Linear reads width 32, llava's 64
        build("llava", tiny_encoder, tiny_llm, init_from=str(tmp_path / "mapl"))
    with pytest.raises(KeyError, match="holds none of this model.s trainable weights"):
        build("clipcap", tiny_encoder, tiny_llm, init_from=str(tmp_path / "mapl"))
