"""``geometry:<real name>`` backbones: the paper's LLMs and encoders at their real size on the meta
device, built offline in seconds in the real names' wrappers, and mechanisms built on them."""

from __future__ import annotations

import math
import socket
import time

import pytest
import torch

from perceptlm import PerceptualLM, zoo
from perceptlm.encoders.clap_audio import ClapAudioEncoder
from perceptlm.encoders.open_clip_encoder import OpenCLIPEncoder
from perceptlm.encoders.timm_encoder import TimmEncoder
from perceptlm.encoders.video import TimeSformerEncoder, VideoFrameEncoder
from perceptlm.llm.language_model import LanguageModel
from perceptlm.zoo.geometry import GEOMETRY_ENCODERS, GEOMETRY_LLMS, on_meta

LLAMA, OPT = "geometry:huggyllama/llama-7b", "geometry:facebook/opt-6.7b"
CLIP_L = "geometry:open_clip:ViT-L-14:openai"
EVA02_L = "geometry:open_clip:EVA02-L-14:merged2b_s4b_b131k"
TIMESFORMER = "geometry:timesformer:facebook/timesformer-base-finetuned-k400"
CLAP = "geometry:clap:laion/clap-htsat-unfused"
BUILD_SECONDS = 30  # a meta build takes well under 2 s here; minutes would mean real storage


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[torch.nn.Module, float]]:
    """Every geometry name, built once with the network unreachable: (backbone, seconds)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a geometry build tried to open a connection: {args}")

    imports = zoo.load_encoder(CLIP_L)  # noqa: F841 - first import of open_clip/timm out of the timing
    patch = pytest.MonkeyPatch()
    patch.setattr(socket.socket, "connect", refuse)
    patch.setattr(socket, "create_connection", refuse)
    backbones = {}
    try:
        for name in GEOMETRY_LLMS + GEOMETRY_ENCODERS:
            start = time.perf_counter()
            backbone = zoo.load_llm(name) if name in GEOMETRY_LLMS else zoo.load_encoder(name)
            backbones[name] = (backbone, time.perf_counter() - start)
    finally:
        patch.undo()
    return backbones


def test_every_name_builds_on_meta_in_seconds_offline(built, capsys):
    assert set(built) == {LLAMA, OPT, CLIP_L, EVA02_L, TIMESFORMER, CLAP}
    for name, (backbone, seconds) in built.items():
        with capsys.disabled():
            print(f"\n{name}: built in {seconds:.2f} s, {count(backbone):,} parameters on meta", end="")
        assert seconds < BUILD_SECONDS, name
        assert on_meta(backbone), name
        assert backbone.name == name


# -- LLMs -----------------------------------------------------------------------------------------
def test_llama_7b_geometry(built):
    llm = built[LLAMA][0]
    assert isinstance(llm, LanguageModel) and llm.config.model_type == "llama"
    config = llm.config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_attention_heads,
            config.vocab_size, config.rms_norm_eps, config.max_position_embeddings) == (
            4096, 11008, 32, 32, 32000, 1e-6, 2048)
    assert llm.num_layers == 32 and llm.hidden_size == 4096
    assert not config.tie_word_embeddings
    # LLaMA-7B: 6.7B parameters (Touvron et al., 2023, Table 2); 6,738,415,616 exactly
    assert count(llm) == 6_738_415_616
    assert abs(count(llm) - 6.74e9) < 0.01e9
    assert not any(p.requires_grad for p in llm.parameters()) and not llm.training


def test_opt_6_7b_geometry(built):
    llm = built[OPT][0]
    assert isinstance(llm, LanguageModel) and llm.config.model_type == "opt"
    config = llm.config
    assert (config.hidden_size, config.ffn_dim, config.num_hidden_layers, config.num_attention_heads,
            config.vocab_size, config.max_position_embeddings, config.word_embed_proj_dim) == (
            4096, 16384, 32, 32, 50272, 2048, 4096)
    assert config.do_layer_norm_before and config.dropout == 0.1
    assert llm.num_layers == 32 and llm.hidden_size == 4096
    # OPT-6.7B (Zhang et al., 2022); 6,658,473,984 exactly (input and output embeddings tied)
    assert count(llm) == 6_658_473_984
    assert abs(count(llm) - 6.66e9) < 0.01e9


def test_llm_tokenizer_is_a_stand_in_inside_the_real_vocabulary(built):
    for name in GEOMETRY_LLMS:
        llm = built[name][0]
        vocab = llm.model.get_input_embeddings().num_embeddings
        assert vocab == llm.config.vocab_size
        assert len(llm.tokenizer) <= vocab
        assert llm.eos_token_id < vocab and llm.tokenizer.pad_token_id < vocab
        ids = llm.tokenizer("a cat", return_tensors="pt").input_ids
        assert int(ids.max()) < vocab
        assert llm.embed(ids.to("meta")).shape == (1, ids.shape[1], 4096)  # embedding lookup on meta


def test_llm_dtype_is_applied_on_meta():
    llm = zoo.load_llm(OPT, dtype=torch.bfloat16)
    assert {p.dtype for p in llm.parameters()} == {torch.bfloat16} and on_meta(llm)


# -- encoders -------------------------------------------------------------------------------------
def test_clip_vit_l14_geometry(built):
    encoder = built[CLIP_L][0]
    assert isinstance(encoder, OpenCLIPEncoder)
    assert (encoder.embed_dim, encoder.num_layers, encoder.grid, encoder.num_tokens) == (1024, 24, (16, 16), 257)
    assert encoder.image_size == (224, 224)
    # CLIP ViT-L/14 image tower: ~304M of CLIP's 428M (Radford et al., 2021); 303,966,208 with the projection
    assert count(encoder) == 303_966_208
    from open_clip.transformer import QuickGELU

    assert isinstance(encoder.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)  # the openai tag's activation


def test_eva02_l14_geometry(built):
    encoder = built[EVA02_L][0]
    assert isinstance(encoder, TimmEncoder) and encoder.kind == "vit"
    assert (encoder.embed_dim, encoder.num_layers, encoder.grid, encoder.num_tokens) == (1024, 24, (16, 16), 257)
    # EVA02-CLIP-L/14 image tower: ~304M (Sun et al., 2023); 304,105,152 (timm trunk + head)
    assert count(encoder) == 304_105_152


def test_timesformer_base_geometry(built):
    encoder = built[TIMESFORMER][0]
    assert isinstance(encoder, TimeSformerEncoder)
    assert (encoder.embed_dim, encoder.num_layers, encoder.num_frames, encoder.image_size) == (768, 12, 8, 224)
    assert encoder.patch_grid == (14, 14) and encoder.num_tokens == 1 + 8 * 196 and encoder.grid is None
    # TimeSformer-base (Bertasius et al., 2021): 121.4M with the K400 head; the backbone is 121,258,752
    assert count(encoder) == 121_258_752
    assert encoder.with_selection(temporal="mean").num_tokens == 197


def test_timesformer_config_defaults_are_the_k400_checkpoint():
    from transformers import TimesformerConfig

    defaults, built_config = TimesformerConfig(), zoo.load_encoder(TIMESFORMER).model.config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
                "image_size", "num_frames", "attention_type", "layer_norm_eps", "qkv_bias"):
        assert getattr(defaults, key) == getattr(built_config, key), key
    assert (defaults.hidden_size, defaults.num_hidden_layers, defaults.patch_size, defaults.image_size,
            defaults.num_frames) == (768, 12, 16, 224, 8)


def test_clap_htsat_unfused_geometry(built):
    encoder = built[CLAP][0]
    assert isinstance(encoder, ClapAudioEncoder)
    config = encoder.model.config
    assert not config.enable_fusion and encoder.channels == 1
    assert (list(config.depths), list(config.num_attention_heads), config.patch_embeds_hidden_size, config.spec_size,
            config.num_mel_bins, config.window_size) == ([2, 2, 6, 2], [4, 8, 16, 32], 96, 256, 64, 8)
    assert (encoder.embed_dim, encoder.num_layers, encoder.grid, encoder.num_tokens) == (768, 2, (2, 32), 64)
    # CLAP's HTS-AT-tiny audio tower (~28M; HTS-AT reports 31M with its classifier): 27,534,488, and
    # its audio projection (768 -> 512 -> 512: 656,384), which the real name keeps for output="projected"
    assert count(encoder.model) == 27_534_488 and count(encoder.projection) == 656_384
    projected = encoder.with_selection(output="projected", layers=1)  # DePALM's reading: 1 + 1024 tokens x 512
    assert (projected.num_raw_tokens, projected.embed_dim) == (1025, 512)


def test_clap_config_defaults_are_htsat_tiny():
    from transformers import ClapAudioConfig, ClapConfig

    assert ClapConfig().audio_config.to_dict() == ClapAudioConfig().to_dict()
    assert ClapAudioConfig(enable_fusion=False).to_dict() == zoo.load_encoder(CLAP).model.config.to_dict()


@pytest.mark.parametrize(("name", "selection", "layers", "tokens", "width", "grid"), [
    (CLIP_L, dict(layers=4, tokens="cls"), 4, 1, 1024, (16, 16)),
    (CLIP_L, dict(layers=[0, 11, -1], tokens="patches", final_norm=False), 3, 256, 1024, (16, 16)),
    (EVA02_L, dict(layers=6, tokens="all"), 6, 257, 1024, (16, 16)),
    (TIMESFORMER, dict(layers=2, tokens="all", temporal="mean"), 2, 197, 768, (14, 14)),
    (TIMESFORMER, dict(layers=[3, -1], tokens="patches"), 2, 8 * 196, 768, None),
    (TIMESFORMER, dict(tokens="cls"), 1, 1, 768, None),
    (CLAP, dict(layers=2, tokens="patches"), 2, 64, 768, (2, 32)),
    (CLAP, dict(stage=2, layers=6, final_norm=False), 6, 256, 384, (4, 64)),
])
def test_feature_selection_is_reported_from_the_config(name, selection, layers, tokens, width, grid):
    encoder = zoo.load_encoder(name, **selection)
    assert (encoder.num_selected_layers, encoder.num_tokens, encoder.embed_dim, encoder.grid) == (
        layers, tokens, width, grid)
    assert on_meta(encoder)


def test_selection_errors_are_the_real_names(built):
    with pytest.raises(ValueError, match="no CLS token"):
        zoo.load_encoder(CLAP, tokens="cls")
    depalm = zoo.load_encoder(TIMESFORMER, num_frames=16, token_order="patch")  # DePALM's MSR-VTT reading
    assert depalm.num_raw_tokens == 1 + 16 * 196 and depalm.grid == (16 * 14, 14)
    with pytest.raises(ValueError, match="reads exactly 16 frames"):
        depalm.with_selection(num_frames=8)
    with pytest.raises(ValueError, match="24 readable layers"):
        built[CLIP_L][0].with_selection(layers=25)


@pytest.mark.parametrize(("name", "media", "shape"), [
    (CLIP_L, (2, 3, 224, 224), (2, 2, 257, 1024)),
    (EVA02_L, (2, 3, 224, 224), (2, 2, 257, 1024)),
    (TIMESFORMER, (1, 8, 3, 224, 224), (1, 2, 1 + 8 * 196, 768)),
    (CLAP, (2, 1, 1001, 64), (2, 2, 64, 768)),
])
def test_meta_forward_gives_the_reported_shapes(name, media, shape):
    encoder = zoo.load_encoder(name, layers=2)
    features = encoder(torch.empty(media, device="meta"))
    assert tuple(features.tokens.shape) == shape and features.tokens.is_meta
    assert features.num_tokens == encoder.num_tokens and features.grid == encoder.grid


def test_per_frame_video_on_a_geometry_image_tower():
    encoder = zoo.load_encoder(f"video:{CLIP_L}", num_frames=16, temporal="concat")
    assert isinstance(encoder, VideoFrameEncoder) and isinstance(encoder.image_encoder, OpenCLIPEncoder)
    assert encoder.num_tokens == 1 + 16 * 256 and on_meta(encoder)


def test_preprocessing_is_the_real_names(built):
    from PIL import Image

    assert built[CLIP_L][0].preprocess(Image.new("RGB", (320, 240))).shape == (3, 224, 224)
    frames = torch.zeros(8, 240, 320, 3, dtype=torch.uint8)
    assert built[TIMESFORMER][0].preprocess(frames).shape == (8, 3, 224, 224)


def test_unknown_geometry_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid: geometry:huggyllama/llama-7b, geometry:facebook/opt-6.7b"):
        zoo.load_llm("geometry:meta-llama/Llama-2-7b-hf")
    valid_encoders = r"valid: geometry:open_clip:ViT-L-14:openai, .*geometry:clap:laion/clap-htsat-unfused"
    with pytest.raises(ValueError, match=valid_encoders):
        zoo.load_encoder("geometry:open_clip:ViT-B-32:openai")


# -- mechanisms at the paper's geometry -----------------------------------------------------------
D, H = 1024, 4096  # CLIP ViT-L/14 width, LLaMA-7B width


def linear(i: int, o: int) -> int:
    return i * o + o


def post_norm_layer(w: int) -> int:  # attention 4w^2+4w, FFN of width w 2w^2+2w, two LayerNorms 4w
    return 6 * w * w + 10 * w


def qpmapper(width: int, queries: int = 32, layers: int = 2) -> int:
    """Linear(D->W), queries, post-norm layers, Linear(W->H) (DePALM's mapper)."""
    return linear(D, width) + queries * width + layers * post_norm_layer(width) + linear(width, H)


C = 1024  # DePALM c-attn's block width
PRESET_TRAINABLE = {  # derived module by module from DePALM's released code, at D=1024, H=4096
    "limber-1": linear(D, H),  # 4,198,400
    "limber-all": linear(D, H),  # 4,198,400
    "mapl": qpmapper(256, layers=4),  # 2,906,368 (the paper: ~2.9M)
    "epalm": linear(D, H) + 6 * 3 * H + 10 * H,  # 4,313,088: per layer RMSNorm weight, scale, bias; 10 prompts
    "depalm-qp-l0": qpmapper(1024) + H,  # 17,888,256 (the paper: ~17.9M)
    "depalm-qp-inner": qpmapper(1024) + 16 * H + 12 * 3 * H,  # 18,097,152 (12 target layers: 17-28 of 32)
    "depalm-r-avgpool": linear(D, H) + H + linear(H, H) + H,  # 20,987,904: at the LLM width
    "depalm-r-linear": linear(D, H) + linear(4 * H, H) + H + linear(H, H) + H,  # 88,100,864 (~88M)
    "depalm-r-qpmapper": linear(D, 768) + 768 + 4 * post_norm_layer(768) + 768 + linear(768, H) + H,  # 18,129,152
    "depalm-r-rand": D + linear(D, H) + H,  # 4,203,520
    "depalm-c-attn": (linear(D, C) + post_norm_layer(C) + linear(C, C)  # the mapper, per encoder layer
                      + linear(H, C) + linear(C, C) + C + 3 * linear(C, C) + C + linear(C, H) + 1  # ONE block
                      + 16 * H),  # 21,060,609 (the paper: ~21M)
}


@pytest.mark.parametrize("preset", list(PRESET_TRAINABLE))
def test_presets_build_at_llama_7b_clip_l_geometry(preset, capsys):
    start = time.perf_counter()
    model = PerceptualLM.build(preset, encoder=CLIP_L, llm=LLAMA)
    seconds = time.perf_counter() - start
    trainable = model.num_trainable_parameters
    with capsys.disabled():
        print(f"\n{preset} at LLaMA-7B / CLIP ViT-L/14 geometry: {trainable:,} trainable parameters "
              f"({model.num_input_tokens} input tokens; built in {seconds:.1f} s)")
    assert math.isfinite(trainable) and trainable == PRESET_TRAINABLE[preset]
    assert seconds < BUILD_SECONDS
    assert on_meta(model.encoder) and on_meta(model.llm)
    assert not any(p.is_meta for p in model.parameters() if p.requires_grad)  # the trainable parts are real


def test_a_preset_builds_at_opt_6_7b_geometry():
    model = PerceptualLM.build("depalm-qp-l0", encoder=EVA02_L, llm=OPT)
    assert model.num_trainable_parameters == PRESET_TRAINABLE["depalm-qp-l0"]  # OPT-6.7B is 4096 wide too
