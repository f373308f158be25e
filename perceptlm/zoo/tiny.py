"""The ``test-tiny-*`` zoo names: tiny random-init backbones (seeded, identical across calls) built from
configs in memory, so tests and smoke runs need no download.

- LLMs: ``test-tiny-llama``, ``-qwen2``, ``-mistral``, ``-opt``, ``-gpt2`` (:func:`tiny_llm_model`,
  with the byte-level :func:`tiny_tokenizer`).
- Images: ``test-tiny-vit`` (and :func:`tiny_hf_vision_encoder` for CLIP / SigLIP / DINOv2).
- Video: ``test-tiny-video`` (``test-tiny-vit`` per frame), ``test-tiny-timesformer``.
- Audio: ``test-tiny-audio`` (Whisper encoder), ``test-tiny-ast``, ``test-tiny-clap``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from perceptlm.encoders.ast_audio import ASTAudioEncoder
from perceptlm.encoders.clap_audio import ClapAudioEncoder
from perceptlm.encoders.hf_vision import HFVisionEncoder, canonical_model_type
from perceptlm.encoders.video import TimeSformerEncoder, VideoFrameEncoder, video_encoder
from perceptlm.encoders.whisper import WhisperAudioEncoder


def _seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the same weights every time, the caller's RNG untouched
        torch.manual_seed(seed)
        return build()


# -- LLMs -----------------------------------------------------------------------------------------
def tiny_tokenizer():
    """A byte-level tokenizer (256 bytes + specials) built in memory, for tiny test LLMs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(sorted(byte_vocab))}
    for special in ("<|endoftext|>", "<|pad|>"):
        vocab[special] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


def tiny_llm_model(model_type: str = "llama", seed: int = 0, **config: Any):
    """A random-init tiny decoder of the given family with the byte-level vocabulary (a 4-layer,
    64-wide LLaMA-like configuration for families without their own defaults here)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    defaults: dict[str, Any] = {
        "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512),
        "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512),
        "mistral": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=512, sliding_window=None),
        "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=4, num_attention_heads=4,
                    word_embed_proj_dim=64, max_position_embeddings=512, dropout=0.0, attention_dropout=0.0),
        "gpt2": dict(n_embd=64, n_layer=4, n_head=4, n_positions=512, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0),
    }
    llama_like = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=512)  # other families
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in defaults and model_type not in CONFIG_MAPPING:
        raise ValueError(f"no tiny config for model_type={model_type!r}: not a transformers model type")
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **{**defaults.get(model_type, llama_like), **config},
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    return model, tokenizer


# -- images ---------------------------------------------------------------------------------------
TINY_VISION = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4)


def tiny_hf_vision_encoder(model_type: str = "vit", **selection: Any) -> HFVisionEncoder:
    """Random-init 4-block, 64-wide, 32 px / 8 px-patch model (4x4 grid) for tests; seeded, so
    identical across calls. ``model_type``: vit, clip, siglip or dinov2."""
    kind = canonical_model_type(model_type)
    model = _seeded(lambda: _tiny_vision_model(kind))
    return HFVisionEncoder(model.eval(), name=f"test-tiny-{model_type}", **selection)


def _tiny_vision_model(kind: str) -> nn.Module:
    import transformers

    if kind == "vit":
        model = transformers.ViTModel(transformers.ViTConfig(**TINY_VISION, intermediate_size=128),
                                      add_pooling_layer=False)
    elif kind == "dinov2":
        model = transformers.Dinov2Model(transformers.Dinov2Config(**TINY_VISION, mlp_ratio=2))
    elif kind == "clip_vision_model":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY_VISION, intermediate_size=128))
    else:
        config = transformers.SiglipVisionConfig(**TINY_VISION, intermediate_size=128, vision_use_head=False)
        model = transformers.SiglipVisionModel(config)
    return model


def tiny_vit_encoder(**selection: Any) -> HFVisionEncoder:
    """Zoo entry ``test-tiny-vit``: tiny random ViT, 16 patches + CLS = 17 tokens."""
    return tiny_hf_vision_encoder("vit", **selection)


# -- video ----------------------------------------------------------------------------------------
TINY_TIMESFORMER = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=64, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=128)


def tiny_timesformer_encoder(temporal: str = "concat", num_frames: int | None = None,
                             **selection: Any) -> TimeSformerEncoder:
    """Zoo entry ``test-tiny-timesformer``: random-init (seeded) 4 blocks, width 64, 4 frames of 32 px,
    8 px patches (4x4 grid): 1 + 4*16 = 65 tokens (17 with ``temporal="mean"``); another
    ``num_frames`` resizes its 4 time embeddings as for a checkpoint."""
    from transformers import TimesformerConfig, TimesformerModel

    model = _seeded(lambda: TimesformerModel(TimesformerConfig(**TINY_TIMESFORMER)))
    return TimeSformerEncoder(model.eval(), name="test-tiny-timesformer", temporal=temporal, num_frames=num_frames,
                              **selection)


def tiny_video_encoder(num_frames: int = 4, **options: Any) -> VideoFrameEncoder:
    """Zoo entry ``test-tiny-video``: ``video:test-tiny-vit`` with 4 frames by default."""
    return video_encoder(tiny_vit_encoder, num_frames=num_frames, **options)


# -- audio ----------------------------------------------------------------------------------------
def tiny_audio_encoder(seed: int = 0, **selection: Any) -> WhisperAudioEncoder:
    """Zoo entry ``test-tiny-audio``: a random-init Whisper encoder (d=64, 2 blocks, 4 heads, 80 mels,
    30 s window)."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                           decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128,
                           num_mel_bins=80, max_source_positions=1500)
    encoder = _seeded(lambda: WhisperEncoder(config), seed)
    return WhisperAudioEncoder(encoder, name="test-tiny-audio", **selection)


def tiny_ast_model() -> nn.Module:
    """Random-init AST: 2 blocks, width 64, AST's real geometry (128 mels x 1024 frames, 16 x 16
    patches, stride 10 -> 12 x 101 patches)."""
    from transformers import ASTConfig, ASTModel

    config = ASTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return _seeded(lambda: ASTModel(config)).eval()


def tiny_clap_model() -> nn.Module:
    """Random-init HTS-AT: 3 stages of 1/1/2 blocks, widths 16/32/64, CLAP's real input geometry
    (64 mels, 1001 -> 1024 frames folded into 256 x 256, 4 x 4 patches): 64x64, 32x32, 16x16 tokens."""
    from transformers import ClapAudioConfig, ClapAudioModel

    config = ClapAudioConfig(patch_embeds_hidden_size=16, depths=[1, 1, 2], num_attention_heads=[2, 2, 4],
                             hidden_size=64, projection_dim=32, enable_fusion=False)
    return _seeded(lambda: ClapAudioModel(config)).eval()


def tiny_clap_projection(model: nn.Module) -> nn.Module:
    """Random-init (seeded) CLAP audio projection for :func:`tiny_clap_model`: Linear(64, 32), ReLU,
    Linear(32, 32), as a ``ClapModel``'s ``audio_projection``."""
    from transformers.models.clap.modeling_clap import ClapProjectionLayer

    return _seeded(lambda: ClapProjectionLayer(model.config), seed=1).eval()


def tiny_ast_encoder(**selection: Any) -> ASTAudioEncoder:
    """Zoo entry ``test-tiny-ast``: 1 global + 12 x 101 patch tokens of width 64, 2 readable layers."""
    return ASTAudioEncoder(tiny_ast_model(), name="test-tiny-ast", **selection)


def tiny_clap_encoder(stage: int = -1, padding: str = "pad", output: str = "blocks",
                      **selection: Any) -> ClapAudioEncoder:
    """Zoo entry ``test-tiny-clap``: last stage = 2 blocks of 4 x 64 (frequency x time) tokens, width 64;
    ``output="projected"``: 1 + 1024 tokens of width 32 (64 time tokens x 16 frames each), one layer."""
    model = tiny_clap_model()
    return ClapAudioEncoder(model, name="test-tiny-clap", stage=stage, padding=padding, output=output,
                            projection=tiny_clap_projection(model), **selection)
