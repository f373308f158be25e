"""Image encoders: EfficientNet-Lite0 with real ImageNet weights and Hugging Face vision transformers."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import numpy as np
import pytest
import torch
from PIL import Image

from perceptlm.encoders.efficientnet import EfficientNetEncoder, build_efficientnet_lite0, remap_state_dict, to_rgb
from perceptlm.encoders.hf_vision import HFVisionEncoder
from perceptlm.zoo import efficientnet_lite0_weights, tiny_hf_vision_encoder, tiny_vit_encoder

HF_TYPES = ("vit", "clip", "siglip", "dinov2")


@pytest.fixture(scope="module")
def lite0_model():
    return build_efficientnet_lite0(efficientnet_lite0_weights())


@pytest.fixture(scope="module")
def lite0(lite0_model):
    return EfficientNetEncoder(model=lite0_model)


@pytest.fixture(scope="module")
def coffee():
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.coffee())


def _images(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


# -- EfficientNet-Lite0 ---------------------------------------------------------------------------
def test_remapper_maps_every_key_once(lite0_model):
    state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    mapped = remap_state_dict(state, lite0_model)
    assert len(mapped) == len(state) == len(lite0_model.state_dict())
    assert set(mapped) == set(lite0_model.state_dict())
    with pytest.raises(KeyError, match="unknown top-level"):
        remap_state_dict({**state, "_bogus.weight": torch.zeros(1)}, lite0_model)
    bad = dict(state)
    bad["_fc.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match="shape"):
        remap_state_dict(bad, lite0_model)
    partial = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    with pytest.raises(KeyError, match="unset"):
        remap_state_dict(partial, lite0_model)


def test_coffee_is_espresso(lite0, coffee):
    logits = lite0.classify(lite0.preprocess(coffee)[None])
    assert logits.shape == (1, 1000)
    probs = logits.softmax(-1)[0]
    assert int(probs.argmax()) == 967  # ImageNet "espresso"
    assert float(probs[967]) > 0.5


def test_global_token_is_the_classifier_input(lite0, coffee):
    image = lite0.preprocess(coffee)[None]
    features = lite0(image)
    logits = lite0.model.classifier(features.tokens[:, 0, 0])
    assert torch.allclose(logits, lite0.classify(image), atol=1e-4)


@pytest.mark.parametrize(
    ("tokens", "count", "cls_index", "grid"),
    [("all", 50, 0, (7, 7)), ("cls", 1, 0, None), ("patches", 49, None, (7, 7))],
)
def test_efficientnet_shapes(lite0_model, tokens, count, cls_index, grid):
    for layers in (1, [0], [-1]):
        encoder = EfficientNetEncoder(model=lite0_model, tokens=tokens, layers=layers)
        assert encoder.layer_indices == [0] and encoder.num_tokens == count
    assert (encoder.embed_dim, encoder.num_layers, encoder.num_raw_tokens) == (1280, 1, 50)
    features = encoder(_images(224, batch=1))
    assert features.tokens.shape == (1, 1, count, 1280)
    assert features.mask.shape == (1, count) and bool(features.mask.all())
    assert features.cls_index == cls_index and features.grid == grid


def test_efficientnet_layer_errors(lite0_model):
    with pytest.raises(ValueError, match=r"1\.\.1"):
        EfficientNetEncoder(model=lite0_model, layers=2)
    with pytest.raises(ValueError, match=r"0\.\.0"):
        EfficientNetEncoder(model=lite0_model, layers=[1])
    encoder = EfficientNetEncoder(model=lite0_model)
    with pytest.raises(ValueError, match="224x224"):
        encoder(_images(160, batch=1))


def test_efficientnet_frozen(lite0):
    assert not any(p.requires_grad for p in lite0.parameters())
    lite0.train()
    assert not any(m.training for m in lite0.modules())


# -- Hugging Face vision transformers -------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models():
    return {kind: tiny_hf_vision_encoder(kind).model for kind in HF_TYPES}


@pytest.mark.parametrize("kind", HF_TYPES)
@pytest.mark.parametrize("tokens", ["all", "cls", "patches"])
@pytest.mark.parametrize(("layers", "expected"), [(1, [3]), (3, [1, 2, 3]), ([0, 2], [0, 2]), ([-1, 0], [0, 3])])
def test_hf_shapes(tiny_models, kind, tokens, layers, expected):
    has_cls = kind != "siglip"
    if tokens == "cls" and not has_cls:
        with pytest.raises(ValueError, match="no CLS"):
            HFVisionEncoder(tiny_models[kind], tokens=tokens, layers=layers)
        return
    encoder = HFVisionEncoder(tiny_models[kind], tokens=tokens, layers=layers)
    assert encoder.layer_indices == expected
    assert encoder.grid == (4, 4) and encoder.num_raw_tokens == 16 + has_cls
    count = {"all": 16 + has_cls, "cls": 1, "patches": 16}[tokens]
    features = encoder(_images(32))
    assert features.tokens.shape == (2, len(expected), count, 64)
    assert features.cls_index == (0 if has_cls and tokens != "patches" else None)
    assert features.grid == (None if tokens == "cls" else (4, 4))


@pytest.mark.parametrize("kind", HF_TYPES)
def test_hf_layer_errors(tiny_models, kind):
    with pytest.raises(ValueError, match=r"0\.\.3"):
        HFVisionEncoder(tiny_models[kind], layers=[4])
    with pytest.raises(ValueError, match=r"1\.\.4"):
        HFVisionEncoder(tiny_models[kind], layers=5)


@pytest.mark.parametrize("kind", ["vit", "dinov2", "siglip"])
def test_final_norm_applied_once(tiny_models, kind):
    model, images = tiny_models[kind], _images(32)
    with torch.no_grad():
        ref = model(pixel_values=images, output_hidden_states=True)
    normed = HFVisionEncoder(model, layers=1, final_norm=True)(images).tokens[:, 0]
    raw = HFVisionEncoder(model, layers=1, final_norm=False)(images).tokens[:, 0]
    assert torch.allclose(normed, ref.last_hidden_state, atol=1e-5)
    assert torch.allclose(raw, ref.hidden_states[-1], atol=1e-6)
    both = HFVisionEncoder(model, layers=[1, 3], final_norm=True)(images).tokens
    assert torch.allclose(both[:, 1], ref.last_hidden_state, atol=1e-5)


def test_clip_final_norm_is_post_layernorm(tiny_models):
    model, images = tiny_models["clip"], _images(32)
    with torch.no_grad():
        ref = model(pixel_values=images)  # CLIP's last_hidden_state is before post_layernorm
    features = HFVisionEncoder(model, layers=1, tokens="cls")(images)
    assert torch.allclose(features.tokens[:, 0, 0], ref.pooler_output, atol=1e-5)


@pytest.mark.parametrize("kind", HF_TYPES)
def test_hf_frozen(tiny_models, kind):
    encoder = HFVisionEncoder(tiny_models[kind])
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not any(m.training for m in encoder.modules())


def test_tiny_vit_deterministic_and_trainable_flag():
    first, second = tiny_vit_encoder(), tiny_vit_encoder(trainable=True)
    assert first.name == "test-tiny-vit" and first.num_raw_tokens == 17
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
    assert all(p.requires_grad for p in second.parameters())
    second.train()
    assert second.training


def test_image_size_override_interpolates():
    encoder = tiny_hf_vision_encoder("vit", image_size=48)
    assert encoder.grid == (6, 6)
    assert encoder(_images(48)).tokens.shape == (2, 1, 37, 64)
    with pytest.raises(ValueError, match="multiple of patch"):
        tiny_hf_vision_encoder("vit", image_size=50)
    with pytest.raises(ValueError, match="not supported"):
        tiny_hf_vision_encoder("resnet")


def test_from_pretrained_local_dir_offline(tmp_path):
    source = tiny_vit_encoder()
    source.model.save_pretrained(tmp_path)
    config = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "resample": 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    loaded = HFVisionEncoder.from_pretrained(tmp_path, layers=2, tokens="patches")
    assert loaded.image_mean == (0.1, 0.2, 0.3) and loaded.resample == "bicubic"
    images = _images(32)
    expected = HFVisionEncoder(source.model, layers=2, tokens="patches")(images).tokens
    assert torch.allclose(loaded(images).tokens, expected, atol=1e-6)


# -- preprocessing --------------------------------------------------------------------------------
def _mode_images():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    wide = Image.fromarray(np.full((30, 50), 40000, dtype=np.uint16))
    assert wide.mode in ("I;16", "I;16L", "I;16B")
    return {
        "RGB": rgb, "L": rgb.convert("L"), "RGBA": rgb.convert("RGBA"), "P": rgb.convert("P"),
        "CMYK": rgb.convert("CMYK"), "I;16": wide, "LA": rgb.convert("LA"), "F": rgb.convert("F"),
    }


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "LA", "F"])
def test_preprocess_modes(lite0, mode):
    image = _mode_images()[mode]
    for encoder, size in ((lite0, 224), (tiny_vit_encoder(), 32)):
        tensor = encoder.preprocess(image)
        assert tensor.shape == (3, size, size) and tensor.dtype == torch.float32
        assert torch.isfinite(tensor).all()


def test_to_rgb_scales_and_composites():
    wide = np.asarray(to_rgb(Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))))
    assert wide.shape == (4, 4, 3) and abs(int(wide[0, 0, 0]) - 128) <= 1  # rescaled, not clipped
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(clear)).min() == 255  # transparent -> white
    with pytest.raises(TypeError, match="PIL image"):
        to_rgb("not an image")
