"""Presets are files: ``perceptlm/presets/<name>.yaml`` read and checked on load, a search path for
folders of one's own, run configs that only name them, and the four-axes table generated from them.
A new combination (4 QPMapper summary tokens injected inner) is one file elsewhere, and it passes the
same checks as the shipped presets."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from test_preset_properties import check_causal, check_formula, check_generation, check_step

import perceptlm
from perceptlm import presets
from perceptlm.presets import loader

ROOT = Path(__file__).parents[1]
RUN_CONFIGS = ROOT / "experiments" / "configs" / "mechanisms"
TABLE_FILE = ROOT / "experiments" / "README.md"
# what a preset file defines: the run configs only name the preset
MECHANISM_FIELDS = {f.name for f in fields(presets.Preset)} - {"name", "source"}

NEW_PRESET = """\
# A combination no paper ran: DePALM's QPMapper with 4 summary tokens, injected inner.
paper: >-
  DePALM (Vallaeys et al. 2024) §3.2 QPMapper (4 queries) with §3.3 inner injection
summary:
  paper: QPMapper x inner
  mapping: Linear, QPMapper (2 layers, 4 queries), Linear
  injection: keys/values inside the upper half
features:
  layers: 2                 # the last 2 layers, each mapped separately
  tokens: all
connector:
  transformer: qpmapper
  num_queries: 4
  num_layers: 2
injection: inner
injection_options:
  start: 0.5
  end: 1.0
  token_norm: true
prompt_tokens: 2
llm_tuning: frozen
trainable_formula: >-
  D*W+W (input Linear) + Q*W (queries) + n*(4*W*W+4*W + 2*W*W+2*W + 4*W) (post-norm layers) + W*H+H
  (output Linear) + P*H (prompt tokens) + X*3*H (RMSNorm weight, scale and bias per target layer)
"""


@pytest.fixture
def own_folder(tmp_path, monkeypatch):
    """A folder of one's own on the search path (``PERCEPTLM_PRESETS``), nothing added otherwise."""
    monkeypatch.setattr(loader, "_added", [])
    folder = tmp_path / "my-presets"
    folder.mkdir()
    monkeypatch.setenv("PERCEPTLM_PRESETS", str(folder))
    return folder


# -- the shipped files -----------------------------------------------------------------------------
def test_shipped_presets_are_the_package_files():
    files = sorted(p.stem for p in loader.PACKAGE_FOLDER.glob("*.yaml"))
    assert files == presets.names() and len(files) >= 20
    for name in presets.names():
        preset = presets.get(name)
        assert preset.name == name and Path(preset.source) == loader.PACKAGE_FOLDER / f"{name}.yaml"
        assert set(preset.summary) == set(loader.SUMMARY_KEYS), f"{name}: the table needs every summary cell"
        assert presets.get(name) == preset and presets.get(name) is not preset  # a fresh copy each time
    preset = presets.get("depalm-qp-l0")
    preset.connector["num_queries"] = 1  # editing one's copy leaves the preset as it is
    assert presets.get("depalm-qp-l0").connector["num_queries"] == 32


def test_stage_recipes_come_from_the_preset():
    assert presets.get("llava").stage("instruct") == {"llm_tuning": "full", "llm_lr": 2e-5}
    assert presets.get("mplug-owl").stage("instruct")["freeze_connector"] is True
    assert presets.get("llava").stage(None) == {}
    with pytest.raises(ValueError, match="no stage 'pretrain'; valid: \\['align', 'instruct'\\]"):
        presets.get("llava").stage("pretrain")
    with_stages = [n for n in presets.names() if presets.get(n).stages]
    with pytest.raises(ValueError, match="presets with stages: " + ", ".join(with_stages)):
        presets.get("limber-1").stage("align")


def test_run_configs_only_name_their_preset():
    """Every preset has its run config under experiments/configs/mechanisms/ naming it, without
    redefining any mechanism field; every run config names an existing preset."""
    configs = {p.stem: yaml.safe_load(p.read_text()) for p in RUN_CONFIGS.glob("*.yaml")}
    assert set(presets.names()) <= set(configs), f"presets without a run config: {set(presets.names()) - set(configs)}"
    for stem, config in configs.items():
        init_args = config["model"]["init_args"]
        assert init_args["preset"] == stem and stem in presets.names()
        overridden = MECHANISM_FIELDS & set(init_args)
        assert not overridden, f"{stem}.yaml redefines {sorted(overridden)}: that belongs in perceptlm/presets/{stem}.yaml"


def test_the_committed_table_is_the_generated_one(capsys):
    text = TABLE_FILE.read_text()
    assert presets.replace_table(text) == text, (
        "the presets table in experiments/README.md is stale: perceptlm presets --markdown --write experiments/README.md")
    from perceptlm.cli import main

    main(["presets", "--markdown"])
    assert capsys.readouterr().out.strip() == presets.markdown_table()


def test_write_table_replaces_between_the_markers(tmp_path):
    from perceptlm.presets.table import BEGIN, END

    path = tmp_path / "doc.md"
    path.write_text(f"intro\n\n{BEGIN}\nold\n{END}\n\nafter\n")
    assert presets.write_table(path) and not presets.write_table(path)
    text = path.read_text()
    assert text.startswith("intro\n\n") and text.endswith("\n\nafter\n") and "old" not in text
    assert f"{BEGIN}\n{presets.markdown_table()}\n{END}" in text
    path.write_text("no markers here\n")
    with pytest.raises(ValueError, match="needs exactly one pair"):
        presets.write_table(path)


# -- checks on load --------------------------------------------------------------------------------
VALID = yaml.safe_load(NEW_PRESET)
BROKEN = [
    ({"mapper": {"x": 1}}, r"unknown key\(s\) \['mapper'\]; valid: \['paper'"),
    ({"name": "other"}, r"unknown key\(s\) \['name'\].*the file name"),
    ({"paper": None}, r"missing key\(s\) \['paper'\]"),
    ({"connector": {"type": "perceiver"}}, r"unknown connector type 'perceiver'; valid: \['clipcap', 'mapping'"),
    ({"connector": {"transformer": "qpmapper", "latents": 4}}, r"connector type 'mapping' takes no argument\(s\) \['latents'\]; valid:"),
    ({"injection": "middle"}, r"unknown injection 'middle'; valid: \['cross_attention', 'inner', 'prefix', 'shared_cross_attention'\]"),
    ({"injection_options": {"depth": 3}}, r"injection 'inner' takes no option\(s\) \['depth'\]; valid: \['layers', 'start'"),
    ({"llm_tuning": "qlora"}, r"llm_tuning='qlora' is unknown; valid: \['frozen', 'lora', 'norms', 'full'\]"),
    ({"stages": {"instruct": {"llm_tuning": "half"}}}, r"stages.instruct.llm_tuning='half' is unknown; valid: \['frozen'"),
    ({"stages": {"instruct": {"llm_lr": "2e-5"}}}, r"stages.instruct.llm_lr \(write e.g. 2.0e-05\) must be int or float"),
    ({"stages": {"instruct": {"lr": 1.0}}}, r"stages.instruct has unknown key\(s\) \['lr'\]; valid: \['llm_tuning'"),
    ({"features": {"tokens": "some"}}, r"features.tokens='some' is unknown; valid: \["),
    ({"features": {"layer": 2}}, r"features has unknown key\(s\) \['layer'\]; valid: \['layers', 'tokens', 'final_norm'\]"),
    ({"prompt_tokens": "2"}, r"prompt_tokens must be int, got '2'"),
    ({"summary": {"tuning": "x"}}, r"summary has unknown key\(s\) \['tuning'\]"),
]


@pytest.mark.parametrize(("change", "message"), BROKEN, ids=[str(sorted(c)) for c, _ in BROKEN])
def test_a_broken_file_names_itself_and_the_valid_choices(change, message, own_folder):
    path = own_folder / "broken.yaml"
    path.write_text(yaml.safe_dump({**VALID, **change}))
    assert "broken" in presets.names()  # listed; the error comes when it is read
    with pytest.raises(ValueError, match=f"^{path}: {message}"):
        presets.get("broken")


def test_not_yaml_names_the_file(own_folder):
    (own_folder / "bad.yaml").write_text("paper: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        presets.get("bad")


# -- the search path -------------------------------------------------------------------------------
def test_search_path_environment_and_add(own_folder, tmp_path, monkeypatch):
    (own_folder / "mine.yaml").write_text(NEW_PRESET)
    assert presets.search_path() == [loader.PACKAGE_FOLDER, own_folder]
    assert "mine" in presets.names() and presets.get("mine").source == str(own_folder / "mine.yaml")
    other = tmp_path / "other"
    other.mkdir()
    (other / "theirs.yaml").write_text(NEW_PRESET)
    presets.add_search_path(other)
    presets.add_search_path(other)  # once is enough
    assert presets.search_path() == [loader.PACKAGE_FOLDER, own_folder, other]
    assert {"mine", "theirs"} <= set(presets.names())
    with pytest.raises(ValueError, match="unknown preset 'nope'; valid presets: .*mine.*theirs"):
        presets.get("nope")
    (other / "depalm-qp-l0.yaml").write_text(NEW_PRESET)
    with pytest.raises(ValueError, match="preset 'depalm-qp-l0' is defined twice"):
        presets.names()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        presets.add_search_path(tmp_path / "missing")
    monkeypatch.setenv("PERCEPTLM_PRESETS", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="PERCEPTLM_PRESETS"):
        presets.names()


def test_a_new_combination_is_one_file(own_folder, tiny_encoder, tiny_llm):
    """4 QPMapper summary tokens injected inner: listed, in ``perceptlm presets``, buildable, and
    passing the shipped presets' property checks (the trainable count is its file's formula)."""
    import copy

    from perceptlm.cli import presets_table

    (own_folder / "qp4-inner.yaml").write_text(NEW_PRESET)
    assert "qp4-inner" in presets.names()
    row = next(line for line in presets_table("test-tiny-vit", "test-tiny-llama").splitlines()
               if line.startswith("| qp4-inner |"))
    module = perceptlm.PerceptualLM.build("qp4-inner", tiny_encoder, copy.deepcopy(tiny_llm)).eval()
    assert f"| {module.num_trainable_parameters:,} | 4 | inner |" in row
    assert "| `qp4-inner` | QPMapper x inner |" in presets.markdown_table()
    assert module.num_visual_tokens == 4 and module.injection.num_prefix_tokens(4) == 0
    blank = module.encoder.blank(2, like=next(module.connector.parameters()))
    assert module.map(blank).shape == (2, 2, 4, tiny_llm.hidden_size)  # per encoder layer
    check_formula(module)
    check_causal(module)
    check_generation(module)
    check_step(perceptlm.PerceptualLM.build("qp4-inner", copy.deepcopy(tiny_encoder), copy.deepcopy(tiny_llm)))
