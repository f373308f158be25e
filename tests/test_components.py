"""The component contracts and their registries: an abstract ``Connector`` and ``Injection`` (a
half-written one fails at construction), one ``name -> class`` registry per package with a builder
whose errors name the valid choices and arguments, and the methods that let the model treat every
mechanism alike (``reads_instruction``, ``num_prefix_tokens``, ``num_perceptual_tokens``)."""

from __future__ import annotations

import pytest
import torch

from perceptlm import presets
from perceptlm.model import PerceptualLM
from perceptlm.connectors import CONNECTORS, Connector, build_connector, connector_arguments
from perceptlm.encoders.base import PerceptualFeatures
from perceptlm.injection import INJECTIONS, Injection, build_injection, injection_arguments
from perceptlm.tuning import LLM_TUNINGS, apply_llm_tuning, tuning_arguments


def test_a_half_written_connector_fails_at_construction():
    class NoCount(Connector):
        def forward(self, features: PerceptualFeatures) -> torch.Tensor:
            return features.tokens[:, 0]

    with pytest.raises(TypeError, match="abstract.*num_output_tokens"):
        NoCount()

    class Whole(NoCount):
        def num_output_tokens(self, num_tokens, grid=None, has_cls=True, num_layers=1):
            return num_tokens

    assert Whole().reads_instruction is False  # the default: the media alone


def test_a_half_written_injection_fails_at_construction():
    class PrefixOnly(Injection):
        def prefix(self, visual):
            return visual

    with pytest.raises(TypeError, match="abstract"):
        PrefixOnly()


def test_registries_hold_the_contracts():
    assert all(issubclass(cls, Connector) for cls in CONNECTORS.values())
    assert all(issubclass(cls, Injection) for cls in INJECTIONS.values())
    assert list(LLM_TUNINGS) == ["frozen", "lora", "norms", "full"]
    assert "num_queries" in connector_arguments("mapping") and "in_dim" not in connector_arguments("mapping")
    assert injection_arguments("inner")[:4] == ["layers", "start", "end", "every"]
    assert tuning_arguments("lora") == ["r", "alpha", "dropout"] and tuning_arguments("full") == []


def test_builders_name_the_valid_choices(tiny_llm):
    with pytest.raises(ValueError, match=r"unknown injection 'middle'; valid: \['cross_attention', 'inner', 'prefix', 'shared_cross_attention'\]"):
        build_injection("middle")
    with pytest.raises(ValueError, match=r"injection 'prefix' takes no option\(s\) \['start'\]; valid: \[\]"):
        build_injection("prefix", start=0.5)
    with pytest.raises(ValueError, match=r"unknown connector type 'nope'; valid: \['clipcap'"):
        build_connector(8, 4, {"type": "nope"})
    with pytest.raises(ValueError, match="llm_tuning='half' is unknown; valid: frozen, lora, norms, full"):
        apply_llm_tuning(tiny_llm, "half")
    with pytest.raises(ValueError, match=r"llm_tuning='frozen' takes no option\(s\) \['r'\]; valid: \[\]"):
        apply_llm_tuning(tiny_llm, "frozen", r=8)
    with pytest.raises(ValueError, match=r"llm_tuning='full' takes no option\(s\) \['r'\]"):
        apply_llm_tuning(tiny_llm, "full", r=8)


def test_reads_instruction_marks_instructblip_alone():
    small = {"width": 16, "num_layers": 2, "num_heads": 4, "num_queries": 4}
    reading = {name for name in presets.names()
               if build_connector(16, 8, {**presets.get(name).connector, **(
                   small if presets.get(name).connector.get("type") == "qformer" else {})}).reads_instruction}
    assert reading == {"instructblip"}


def test_token_counts_come_from_the_injection():
    assert build_injection("prefix").num_prefix_tokens(7) == 7
    assert build_injection("inner").num_prefix_tokens(7) == 0
    assert build_injection("cross_attention").num_prefix_tokens(7) == 0
    assert build_injection("prefix").num_perceptual_tokens(7) == 7
    assert build_injection("inner").num_perceptual_tokens(7) == 7
    assert build_injection("inner", adaption_prompts=10).num_perceptual_tokens(1) == 10  # LLaMA-Adapter


def test_llama_adapter_reports_its_prompts(tiny_encoder, tiny_llm):
    import copy

    module = PerceptualLM.build("llama-adapter", tiny_encoder, copy.deepcopy(tiny_llm))
    assert module.num_visual_tokens == presets.get("llama-adapter").injection_options["adaption_prompts"]
