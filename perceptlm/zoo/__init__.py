"""Names -> backbones (:mod:`perceptlm.zoo.registry`): packaged pretrained weights and tiny test backbones."""

from perceptlm.zoo.packaged import (
    efficientnet_lite0_encoder,
    efficientnet_lite0_weights,
    load_whisper_tiny_en,
    smollm2_folder,
    whisper_tiny_en_dir,
    whisper_tiny_en_encoder,
)
from perceptlm.zoo.registry import DTYPES, ENCODER_PREFIXES, ENCODERS, LLM_NAMES, llm_dtype, load_encoder, load_llm
from perceptlm.zoo.tiny import (
    tiny_ast_encoder,
    tiny_ast_model,
    tiny_audio_encoder,
    tiny_clap_encoder,
    tiny_clap_model,
    tiny_clap_projection,
    tiny_hf_vision_encoder,
    tiny_llm_model,
    tiny_timesformer_encoder,
    tiny_tokenizer,
    tiny_video_encoder,
    tiny_vit_encoder,
)

__all__ = [
    "DTYPES",
    "ENCODERS",
    "ENCODER_PREFIXES",
    "LLM_NAMES",
    "efficientnet_lite0_encoder",
    "efficientnet_lite0_weights",
    "llm_dtype",
    "load_encoder",
    "load_llm",
    "load_whisper_tiny_en",
    "smollm2_folder",
    "tiny_ast_encoder",
    "tiny_ast_model",
    "tiny_audio_encoder",
    "tiny_clap_encoder",
    "tiny_clap_model",
    "tiny_clap_projection",
    "tiny_hf_vision_encoder",
    "tiny_llm_model",
    "tiny_timesformer_encoder",
    "tiny_tokenizer",
    "tiny_video_encoder",
    "tiny_vit_encoder",
    "whisper_tiny_en_dir",
    "whisper_tiny_en_encoder",
]
