"""The benchmarks' workloads: encoders of a given feature geometry, LLMs, random features, batches.

Real geometry (DePALM's default backbone): CLIP ViT-L/14 at 224 px gives 257 tokens (CLS + 16x16
patches) of width 1024 per layer, 24 layers. Training from the feature cache never runs the encoder:
the module receives :class:`~perceptlm.encoders.base.PerceptualFeatures` directly
(``InterfaceModule.perceive`` accepts them). The encoder is then only its description (width, token
count, grid, CLS, depth for the layer selection); :func:`feature_encoder` builds the transformers
``CLIPVisionModel`` of that configuration on the ``meta`` device (no weights in memory, nothing
initialised), or materialised with ``materialise=True`` when something must move the whole module
(Lightning's ``Trainer`` calls ``module.to(device)``; meta tensors cannot be copied).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from perceptlm.batch import Batch
from perceptlm.encoders.base import PerceptualFeatures
from perceptlm.encoders.hf_vision import HFVisionEncoder
from perceptlm.llm.language_model import LanguageModel

CLIP_L14 = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                image_size=224, patch_size=14)
# The same description at test scale: 17 tokens (CLS + 4x4), width 64, 6 layers (eP-ALM reads 6).
TINY_CLIP = dict(hidden_size=64, num_hidden_layers=6, num_attention_heads=4, intermediate_size=128,
                 image_size=32, patch_size=8)


def feature_encoder(smoke: bool = False, materialise: bool = False, layers: int | None = None,
                    name: str | None = None) -> HFVisionEncoder:
    """A CLIP vision tower of ViT-L/14 geometry (``smoke``: a 64-wide, 17-token one) as a
    perceptlm encoder. ``materialise=False`` keeps it on the meta device (features come from the
    cache; the encoder never runs). ``layers`` overrides the depth (a materialised encoder that is
    only moved, never run, needs no more blocks than the selection reads)."""
    import transformers

    geometry = dict(TINY_CLIP if smoke else CLIP_L14)
    if layers is not None:
        geometry["num_hidden_layers"] = layers
    config = transformers.CLIPVisionConfig(**geometry)
    if materialise:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = transformers.CLIPVisionModel(config)
    else:
        with torch.device("meta"):
            model = transformers.CLIPVisionModel(config)
    label = name or ("clip-vit-tiny-shape" if smoke else "clip-vit-l-14-shape")
    return HFVisionEncoder(model.eval(), name=label)


def load_llm(smoke: bool = False, name: str | None = None) -> LanguageModel:
    """``smollm2-135m-instruct`` (real weights, offline) or, for smoke runs, ``test-tiny-llama``."""
    from perceptlm import zoo

    return zoo.load_llm(name or ("test-tiny-llama" if smoke else "smollm2-135m-instruct"))


def random_features(encoder: Any, batch: int, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> PerceptualFeatures:
    """Random features ``[B, L, N, D]`` with the encoder's layer and token selection applied, as the
    feature cache would give them (the raw layer outputs, then the same selection)."""
    raw = torch.randn(batch, encoder.num_selected_layers, encoder.num_raw_tokens, encoder.embed_dim,
                      generator=generator, dtype=dtype)
    mask = torch.ones(batch, encoder.num_raw_tokens, dtype=torch.bool)
    return encoder._select_tokens(raw, mask).to(device)


def text_batch(vocab_size: int, batch: int, text_length: int = 24, answer_length: int = 8,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu",
               low: int = 10) -> Batch:
    """Right-aligned training text as the collator gives it (a :class:`~perceptlm.batch.Batch`
    without media): ``text_length`` tokens, the last
    ``answer_length`` supervised (answer + EOS), the prompt before them unsupervised. Ids are drawn
    from ``[low, vocab_size - 1)`` (clear of the special tokens at the start of the vocabulary and
    of the last id, which the LLaVA peer uses as its image token)."""
    if not 0 < answer_length <= text_length:
        raise ValueError(f"need 0 < answer_length <= text_length, got {answer_length}, {text_length}")
    ids = torch.randint(low, vocab_size - 1, (batch, text_length), generator=generator)
    labels = ids.clone()
    labels[:, : text_length - answer_length] = -100
    return Batch(ids=[f"sample-{i}" for i in range(batch)], task="caption", media=None, prompts=[""] * batch,
                 sources=[None] * batch, input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                 labels=labels.to(device))


def training_batch(module: Any, batch: int, text_length: int = 24, answer_length: int = 8, seed: int = 0,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Batch:
    """One training batch for ``module``: random cached-style features + random text."""
    generator = torch.Generator().manual_seed(seed)
    vocab = min(len(module.tokenizer), module.llm.model.get_input_embeddings().num_embeddings)
    out = text_batch(vocab, batch, text_length, answer_length, generator, device)
    out.media = random_features(module.encoder, batch, generator, dtype, device)
    return out


def trainable(module: torch.nn.Module) -> list[Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


ADAMW = {"lr": 8e-4, "weight_decay": 0.1, "eps": 1e-4}  # DePALM's, the InterfaceModule defaults


def optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters with DePALM's hyper-parameters."""
    return torch.optim.AdamW(trainable(module), **ADAMW)


def step_fn(module: Any, batch: Batch, opt: torch.optim.Optimizer, clip: float | None = 0.8):
    """A plain training step: loss, backward, gradient clipping, AdamW step, zero grads."""
    params = trainable(module)

    def step() -> float:
        loss = module.loss(batch)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step
