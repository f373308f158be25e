"""Every L0 (prefix) preset of the two studies on tiny backbones: visual-token shapes, trainable
counts against the documented formula, frozen backbones after a step, causality; the connectors'
own properties (token resampler grouping, R-rand sampling, Q-Former masking/freezing, ClipCap).
The presets come from their files (``perceptlm.presets.names()``); every expected fact is derived
from a preset's fields, so a new preset file is checked with no change here."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from perceptlm.model import PerceptualLM
from perceptlm import presets, zoo
from perceptlm.connectors import (
    CONNECTORS,
    ClipCapConnector,
    QFormerConnector,
    TokenResampler,
    build_connector,
    group_tokens,
)
from perceptlm.connectors.resampler import sample_keep_fraction
from perceptlm.data.collate import Collator, Sample
from perceptlm.encoders.base import PerceptualFeatures

L0_PRESETS = [name for name in presets.names() if presets.get(name).injection == "prefix"]
CONFIGS = Path(__file__).parents[1] / "experiments" / "configs" / "mechanisms"
PROMPTS = ["what shape?\n\nAnswer:\n", "color?\n\nAnswer:\n"]
ANSWERS = ["circle", "teal"]


def tiny_overrides(preset: presets.Preset, encoder_layers: int = 4) -> dict:
    """Paper-size Q-Formers (768/1024 wide, 6-12 layers) shrunk for CPU tests; a feature selection
    deeper than test-tiny-vit's ``encoder_layers`` readable layers (eP-ALM reads 6) capped."""
    overrides = {}
    if preset.connector.get("type") == "qformer":
        overrides["connector"] = {"num_layers": 2, "num_heads": 4, "num_queries": 8,
                                  **({"width": 64} if preset.connector.get("width") else {})}
    if isinstance(preset.features.get("layers"), int) and preset.features["layers"] > encoder_layers:
        overrides["features"] = {"layers": encoder_layers}
    width = preset.connector.get("width")
    if preset.connector.get("type", "mapping") != "qformer" and isinstance(width, int) and width >= 512:
        overrides["connector"] = {"width": 64}  # DePALM's 1024-wide mappers (768 for R-QPMapper)
    if preset.injection_options.get("width", 0) >= 512:
        overrides["injection_options"] = {"width": 64}  # DePALM c-attn's 1024-wide block
    return overrides


def expected_visual_tokens(preset: presets.Preset, encoder) -> int:
    """The prefix tokens a preset gives at evaluation, from its fields and the encoder's geometry
    (CLS + a ``grid`` of patches per layer)."""
    c, selection = preset.connector, preset.features.get("tokens", "all")
    rows, columns = encoder.grid
    per_layer = {"cls": 1, "patches": rows * columns, "all": 1 + rows * columns}[selection]
    layers = preset.features.get("layers", 1)
    layers = layers if isinstance(layers, int) else len(layers)
    kind = c.get("type", "mapping")
    if kind == "mapping":
        return c.get("num_queries", 32) if c.get("transformer", "qpmapper") == "qpmapper" else layers * per_layer
    if kind == "resampler":  # CLS + one token per 2x2 window (R-rand: every token at evaluation)
        windows = math.ceil(rows / 2) * math.ceil(columns / 2)
        return layers * (per_layer if c["mode"] == "rand" else int(selection != "patches") + windows)
    if kind == "clipcap":
        return c.get("prefix_length", 10)
    if kind == "qformer":
        return c.get("num_queries", 32)
    raise AssertionError(f"no visual-token count for connector type {kind}")


# -- the documented formula, twice: the preset's string evaluated, and an independent count ---------
def formula_variables(preset: presets.Preset, D: int, H: int, llm=None, targets: int = 0) -> dict[str, int]:
    """The formula's symbols; ``targets``: LLM layers the injection acts on (``X``)."""
    c = preset.connector
    config = llm.config if llm is not None else None
    lora = {"L": config.num_hidden_layers, "r": 8,
            "K": H * config.num_key_value_heads // config.num_attention_heads} if config is not None else {}
    kind = c.get("type", "mapping")
    n = c.get("num_layers", 0)
    Q = {"clipcap": c.get("prefix_length", 10), "resampler": 1}.get(kind, c.get("num_queries", 32))
    heads = {"A": config.num_attention_heads} if config is not None else {}
    width = H if c.get("width") == "llm" else (c.get("width") or D)
    return {"D": D, "W": width, "V": preset.injection_options.get("width", 0), "G": c.get("global_layers", 0),
            "H": H, "Q": Q, "n": n,
            "P": preset.prompt_tokens,
            "C": math.ceil(n / c.get("cross_attention_freq", 1)), "X": targets,
            "R": preset.injection_options.get("adaption_prompts", 0), **lora, **heads}


def formula_value(preset: presets.Preset, D: int, H: int, llm=None, targets: int = 0) -> int:
    """Evaluate ``preset.trainable_formula`` with parenthesised prose (comments) removed."""
    expr, previous = preset.trainable_formula, None
    while expr != previous:
        previous, expr = expr, re.sub(r"\s*\([^()]*[A-Za-z]{2,}[^()]*\)", "", expr)
    return eval(expr, {"__builtins__": {}}, formula_variables(preset, D, H, llm, targets))  # noqa: S307 (test helper)


def expected_trainable(preset: presets.Preset, D: int, H: int, llm=None) -> int:
    """The same count derived module by module (Linear(i, o) = i*o + o; LayerNorm(w) = 2w)."""
    def linear(i: int, o: int) -> int:
        return i * o + o

    def qp_layer(w: int) -> int:  # post-norm encoder layer, FFN width w
        return linear(w, 3 * w) + linear(w, w) + 2 * linear(w, w) + 2 * (2 * w)

    c, P = preset.connector, preset.prompt_tokens
    kind = c.get("type", "mapping")
    if kind == "mapping":
        W = c.get("width") or D
        total = linear(D, W) if c.get("input_projection", True) else 0
        if c.get("transformer", "qpmapper"):
            total += c["num_queries"] * W + c["num_layers"] * qp_layer(W)
        total += linear(W, H) + (c.get("output_depth", 1) - 1) * linear(H, H)
    elif kind == "resampler":
        W = H if c.get("width") == "llm" else (c.get("width") or D)
        total = (linear(D, W) if c.get("width") else 0) + W + linear(W, H)  # input Linear, RMSNorm, output Linear
        if c["mode"] == "linear":
            total += linear(4 * W, W)
        elif c["mode"] == "qpmapper":
            total += W + c["num_layers"] * qp_layer(W)
        if c.get("global_layers"):
            total += W + c["global_layers"] * qp_layer(W)
    elif kind == "clipcap":
        k = c["prefix_length"]
        total = linear(D, k * H // 2) + linear(k * H // 2, k * H)
    elif kind == "qformer":
        W, Q, n = c.get("width") or D, c["num_queries"], c["num_layers"]
        self_layer = linear(W, 3 * W) + linear(W, W) + 2 * W + linear(W, 4 * W) + linear(4 * W, W) + 2 * W
        cross = W * W + 2 * W * D + 3 * W + linear(W, W) + 2 * W
        qformer = 2 * D + Q * W + 2 * W + n * self_layer + math.ceil(n / c["cross_attention_freq"]) * cross
        total = (0 if c.get("freeze") else qformer) + linear(W, H) + (linear(H, W) if c.get("instruction_aware") else 0)
    else:
        raise AssertionError(f"no formula for connector type {kind}")
    if preset.llm_tuning == "lora" and llm is not None:  # rank 8 on q_proj (H->H) and v_proj (H->K)
        K = H * llm.config.num_key_value_heads // llm.config.num_attention_heads
        total += llm.config.num_hidden_layers * (linear(H, 8) - 8 + linear(8, H) - H + linear(H, 8) - 8 + linear(8, K) - K)
    return total + P * H


# -- helpers ---------------------------------------------------------------------------------------
def build(name, encoder, llm, **overrides):
    preset = presets.get(name)
    for key, value in tiny_overrides(preset).items():
        overrides[key] = {**value, **overrides.get(key, {})}
    return PerceptualLM.build(name, encoder, llm, **overrides)


def make_batch(module, train=True):
    samples = [Sample(str(i), torch.randn(3, 32, 32), p, [a]) for i, (p, a) in enumerate(zip(PROMPTS, ANSWERS))]
    return Collator(module.tokenizer, "vqa", train=train)(samples)


def features(tokens, cls_index=0, grid=None, mask=None):
    """``[B, N, D]`` -> single-layer PerceptualFeatures."""
    mask = torch.ones(tokens.shape[:2], dtype=torch.bool) if mask is None else mask
    return PerceptualFeatures(tokens.unsqueeze(1), mask, cls_index, grid)


def encoder_for(name, tiny_encoder):
    selection = {**presets.get(name).features, **tiny_overrides(presets.get(name)).get("features", {})}
    if selection == {"layers": 1, "tokens": "all"}:
        return tiny_encoder
    return zoo.load_encoder("test-tiny-vit", **selection)


# -- presets ---------------------------------------------------------------------------------------
def test_every_preset_is_listed_documented_and_configured():
    from perceptlm.injection import INJECTIONS
    from perceptlm.tuning import LLM_TUNINGS

    readme = (Path(__file__).parents[1] / "experiments" / "README.md").read_text()
    assert L0_PRESETS and set(L0_PRESETS) < set(presets.names())
    for name in presets.names():
        preset = presets.get(name)
        assert preset.paper and preset.trainable_formula
        assert (preset.injection == "prefix") == (name in L0_PRESETS)
        assert preset.injection in INJECTIONS and preset.llm_tuning in LLM_TUNINGS
        assert preset.connector.get("type", "mapping") in CONNECTORS
        config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert config["model"]["init_args"]["preset"] == name
        assert f"| `{name}` |" in readme  # the four-axes table
    assert presets.get("mplug-owl").llm_tuning == "lora" and presets.get("blip2").llm_tuning == "frozen"


@pytest.mark.parametrize("name", L0_PRESETS)
def test_visual_tokens_and_trainable_count(name, tiny_encoder, tiny_llm):
    encoder = encoder_for(name, tiny_encoder)
    module = build(name, encoder, tiny_llm).eval()
    batch = make_batch(module)
    visual = module.perceive(batch.media)
    H, D = tiny_llm.hidden_size, encoder.embed_dim
    assert visual.shape == (2, expected_visual_tokens(module.preset, encoder), H)
    assert module.num_visual_tokens == expected_visual_tokens(module.preset, encoder)
    assert module.perceive(batch.media, blind=True).shape == visual.shape  # the blind baseline
    expected = expected_trainable(module.preset, D, H, tiny_llm)
    assert formula_value(module.preset, D, H, tiny_llm) == expected
    assert module.num_trainable_parameters == expected


@pytest.mark.parametrize("name", L0_PRESETS)
def test_one_step_changes_only_the_interface(name, tiny_encoder, tiny_llm):
    module = build(name, copy.deepcopy(encoder_for(name, tiny_encoder)), copy.deepcopy(tiny_llm))
    module.train()
    assert not module.encoder.training and not module.llm.training
    frozen = {k for k, p in module.named_parameters() if not p.requires_grad}
    before = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    module.loss(make_batch(module)).backward()
    optimizer.step()
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    intended = ("connector.", "prompt.") + (("llm.",) if module.preset.llm_tuning == "lora" else ())
    assert changed and all(k.startswith(intended) for k in changed)
    assert all("lora_" in k for k in changed if k.startswith("llm."))  # LoRA adapters only
    assert not changed & frozen  # encoder, LLM and (minigpt4) the frozen Q-Former are bit-identical


@pytest.mark.parametrize("name", L0_PRESETS)
def test_forward_is_causal(name, tiny_encoder, tiny_llm):
    module = build(name, encoder_for(name, tiny_encoder), tiny_llm).eval()
    batch = make_batch(module)
    ids = batch.input_ids[:1].clone()
    media, mask = batch.media[:1], batch.attention_mask[:1]
    logits = module(media, ids, mask)
    t = ids.shape[1] // 2
    ids[:, t + 1] = (ids[:, t + 1] + 7) % module.tokenizer.vocab_size
    changed = module(media, ids, mask)
    assert torch.allclose(logits[:, : t + 1], changed[:, : t + 1], atol=1e-6)
    assert not torch.allclose(logits[:, t + 1 :], changed[:, t + 1 :])


# -- token resampler -------------------------------------------------------------------------------
def test_resampler_counts():
    for mode in ("avgpool", "linear", "qpmapper"):
        resampler = TokenResampler(64, 32, mode=mode, num_layers=1)
        assert resampler.num_output_tokens(257, grid=(16, 16)) == 65  # CLIP-L/14 at 224 px
        assert resampler.num_output_tokens(50, grid=(7, 7)) == 17  # odd grid: padded to 8x8
        assert resampler.num_output_tokens(1500, grid=None, has_cls=False) == 375  # audio frames
        assert resampler.num_output_tokens(34, grid=(4, 4), num_layers=2) == 10  # per layer
    assert TokenResampler(64, 32, mode="rand").num_output_tokens(257, grid=(16, 16)) == 257


def test_two_by_two_windows_are_hand_computed_means():
    grid = torch.arange(16.0).reshape(1, 16, 1).expand(1, 16, 2) * torch.tensor([1.0, -2.0])
    cls = torch.full((1, 1, 2), 100.0)
    resampler = TokenResampler(2, 2, mode="avgpool", average="tokens")
    with torch.no_grad():
        resampler.output.weight.copy_(torch.eye(2))
        resampler.output.bias.zero_()
    out = resampler(features(torch.cat([cls, grid], dim=1), grid=(4, 4)))
    # Windows of a row-major 4x4 grid: {0,1,4,5}, {2,3,6,7}, {8,9,12,13}, {10,11,14,15}.
    means = torch.stack([grid[0, idx].mean(0) for idx in ([0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15])])
    expected = torch.cat([cls[0], means])
    assert torch.allclose(out[0], F.rms_norm(expected, (2,), eps=1e-4), atol=1e-6)
    # Odd 3x3 grid: padded; the partial windows average their real tokens only.
    tokens = torch.arange(9.0).reshape(1, 9, 1)
    groups, valid = group_tokens(tokens, torch.ones(1, 9, dtype=torch.bool), (3, 3))
    assert groups.shape == (1, 4, 4, 1) and valid.sum().item() == 9
    pooled = TokenResampler(1, 1, mode="avgpool", average="tokens").reduce(tokens, torch.ones(1, 9, dtype=torch.bool), (3, 3))
    assert pooled.flatten().tolist() == [2.0, 3.5, 6.5, 8.0]  # {0,1,3,4} {2,5} {6,7} {8}


def test_channel_average_pooling_is_depalms_released_operator():
    """DePALM's released R-avgpool: the tokens of each window ``[4, W]`` through ``nn.AvgPool1d(4)``
    (it pools the last dimension: 4 adjacent channels), then the 4 pooled tokens read as one."""
    torch.manual_seed(0)
    patches = torch.randn(2, 16, 8)
    grid = (4, 4)
    resampler = TokenResampler(8, 8, mode="avgpool", average="channels")
    reduced = resampler.reduce(patches, torch.ones(2, 16, dtype=torch.bool), grid)
    windows = patches.reshape(2, 2, 2, 2, 2, 8).transpose(2, 3).reshape(2 * 4, 4, 8)  # DePALM's regrouping
    released = torch.nn.AvgPool1d(4)(windows).reshape(2, 4, 8)
    assert torch.equal(reduced, released)
    assert not torch.allclose(reduced, TokenResampler(8, 8, mode="avgpool", average="tokens").reduce(
        patches, torch.ones(2, 16, dtype=torch.bool), grid))  # not the window mean
    with pytest.raises(ValueError, match="divisible by reduction=4"):
        TokenResampler(6, 6, mode="avgpool", average="channels")
    with pytest.raises(ValueError, match="valid: \\('channels', 'tokens'\\)"):
        TokenResampler(8, 8, mode="avgpool", average="max")


def test_resampler_width_and_global_summary_follow_depalms_scripts():
    """R-linear / R-avgpool at the LLM width (a Linear to it first, every token, CLS included);
    R-QPMapper's 1% scripts: a global QPMapper with one query after the norm -> one token."""
    tokens = torch.randn(2, 17, 8)
    linear = TokenResampler(8, 32, mode="linear", width="llm")
    assert linear.input.weight.shape == (32, 8) and linear.pool.weight.shape == (32, 4 * 32)
    assert linear.output.weight.shape == (32, 32) and linear.norm.weight.shape == (32,)
    assert linear(features(tokens, grid=(4, 4))).shape == (2, 5, 32)
    summary = TokenResampler(8, 32, mode="qpmapper", width=16, activation=None, global_layers=1).eval()
    assert summary(features(tokens, grid=(4, 4))).shape == (2, 1, 32)
    assert summary.num_output_tokens(17, (4, 4)) == 1
    assert isinstance(summary.pool.encoder.layers[0].activation, torch.nn.Identity)  # a linear FFN
    with pytest.raises(ValueError, match="'llm'"):
        TokenResampler(8, 32, width="model")


def test_resampler_groups_four_consecutive_audio_frames():
    encoder = zoo.load_encoder("test-tiny-audio")
    media = encoder.stack_media([encoder.preprocess(np.random.default_rng(0).standard_normal(16000).astype(np.float32))])
    feats = encoder(media)
    assert feats.grid is None and feats.cls_index is None
    tokens, mask = feats.tokens[:, 0], feats.mask
    real = int(mask.sum())  # 1 s of audio -> 50 frames of 20 ms
    reduced = TokenResampler(64, 64, mode="avgpool", average="tokens").reduce(tokens, mask, None)
    assert reduced.shape == (1, 375, 64)
    full = real // 4
    expected = tokens[0, : full * 4].reshape(full, 4, 64).mean(1)
    assert torch.allclose(reduced[0, :full], expected, atol=1e-5)
    assert torch.allclose(reduced[0, full], tokens[0, full * 4 : real].mean(0), atol=1e-5)  # partial group
    assert torch.equal(reduced[0, full + 1 :], torch.zeros_like(reduced[0, full + 1 :]))  # padding only
    connector = TokenResampler(64, 48, mode="linear")
    assert connector(feats).shape == (1, connector.num_output_tokens(1500, None, has_cls=False), 48)


def test_rand_keeps_all_at_eval_fewer_in_training_and_is_seeded():
    resampler = TokenResampler(8, 8, mode="rand")
    feats = features(torch.randn(2, 1 + 64, 8), grid=(8, 8))
    assert resampler.eval()(feats).shape[1] == 65
    resampler.train()
    counts = set()
    for seed in range(20):
        torch.manual_seed(seed)
        first = resampler(feats)
        torch.manual_seed(seed)
        assert torch.equal(first, resampler(feats))
        counts.add(first.shape[1])
    assert all(1 + 4 <= c <= 1 + 32 for c in counts) and len(counts) > 1  # keep 1/16..1/2 of 64
    torch.manual_seed(0)
    fractions = [sample_keep_fraction() for _ in range(2000)]
    assert min(fractions) >= 1 / 16 and max(fractions) <= 0.5
    assert 0.1 <= sum(f == 0.5 for f in fractions) / len(fractions) <= 0.2


# -- Q-Former, ClipCap, factory --------------------------------------------------------------------
def test_qformer_ignores_masked_tokens_and_freezes():
    connector = QFormerConnector(16, 8, width=16, num_queries=4, num_layers=2, num_heads=4).eval()
    tokens, mask = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    out = connector(features(tokens, None, mask=mask))
    tokens[0, 4:] = 1e3
    assert torch.allclose(out, connector(features(tokens, None, mask=mask)), atol=1e-5)
    assert out.shape == (2, 4, 8) and connector.num_output_tokens(6) == 4
    frozen = QFormerConnector(16, 8, width=16, num_queries=4, num_layers=2, num_heads=4, freeze=True).train()
    assert not frozen.qformer.training and frozen.output.training
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {"output.weight", "output.bias"}


def test_minigpt4_loads_a_blip2_qformer(tmp_path):
    blip2 = QFormerConnector(16, 8, width=16, num_queries=4, num_layers=2, num_heads=4)
    torch.save({"state_dict": {f"connector.{k}": v for k, v in blip2.state_dict().items()}}, tmp_path / "b.ckpt")
    minigpt4 = build_connector(16, 8, {"type": "qformer", "width": 16, "num_queries": 4, "num_layers": 2,
                                       "num_heads": 4, "freeze": True, "init_from": str(tmp_path / "b.ckpt")})
    for key, value in blip2.qformer.state_dict().items():
        assert torch.equal(minigpt4.qformer.state_dict()[key], value)


def test_clipcap_same_at_train_and_test():
    for mapping in ("mlp", "transformer"):
        connector = ClipCapConnector(16, 8, prefix_length=3, mapping=mapping, num_layers=1, normalize=True)
        feats = features(torch.randn(2, 5, 16))
        train_out = connector.train()(feats)
        assert train_out.shape == (2, 3, 8)
        assert torch.equal(train_out, connector.eval()(feats))


def test_build_connector_errors_name_the_valid_choices():
    assert isinstance(build_connector(8, 4, {}), CONNECTORS["mapping"])
    with pytest.raises(ValueError, match="valid: .*resampler"):
        build_connector(8, 4, {"type": "nope"})
    with pytest.raises(ValueError, match="takes no argument.*'mode'"):
        build_connector(8, 4, {"type": "resampler", "num_queries": 3})
