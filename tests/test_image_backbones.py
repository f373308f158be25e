"""open_clip and timm image backbones (random init, offline): shapes for every selection, per-block
readout against a manual forward, final norms, preprocessing, and local-cache-only weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from perceptlm import zoo
from perceptlm.encoders.open_clip_encoder import OpenCLIPEncoder, cached_open_clip_weights
from perceptlm.encoders.timm_encoder import TimmEncoder

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def vit_b32():
    return zoo.load_encoder("open_clip:ViT-B-32")


def _images(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _uniform(color=(200, 30, 90), size=(61, 45)) -> Image.Image:
    return Image.new("RGB", size, color)


def _expected_pixels(color, mean, std) -> np.ndarray:
    return (np.array(color) / 255.0 - np.array(mean)) / np.array(std)


# -- open_clip ViT ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layers,tokens,n_layers,n_tokens", [
    (1, "all", 1, 50), ([0, -1], "cls", 2, 1), (6, "patches", 6, 49),
])
def test_open_clip_selection_shapes(vit_b32, layers, tokens, n_layers, n_tokens):
    encoder = vit_b32.with_selection(layers=layers, tokens=tokens)
    features = encoder(_images(224, batch=1))
    assert features.tokens.shape == (1, n_layers, n_tokens, 768) == (1, n_layers, encoder.num_tokens, encoder.embed_dim)
    assert features.cls_index == (0 if tokens in ("all", "cls") else None)
    assert features.grid == (None if tokens == "cls" else (7, 7))
    blank = encoder.blank(1, features.tokens)
    assert blank.tokens.shape == features.tokens.shape and not blank.tokens.any()


def test_open_clip_hooks_read_the_right_block(vit_b32):
    visual, images, layers = vit_b32.visual, _images(224, batch=1), [0, 5, 11]
    with torch.no_grad():  # manual forward: patch embedding, CLS, positions, ln_pre, blocks
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], dim=1) + visual.positional_embedding
        x = visual.ln_pre(x)
        manual = []
        for block in visual.transformer.resblocks:
            x = block(x)
            manual.append(x)
        pooled = visual(images)
    raw = vit_b32.with_selection(layers=layers, final_norm=False)(images).tokens
    normed = vit_b32.with_selection(layers=layers, final_norm=True)(images).tokens
    for position, layer in enumerate(layers):
        torch.testing.assert_close(raw[:, position], manual[layer])
        torch.testing.assert_close(normed[:, position], visual.ln_post(manual[layer]))
    assert not torch.allclose(manual[4], manual[5], atol=1e-3)  # the blocks differ, so the index matters
    # The last block, ln_post, CLS, projection = open_clip's own image embedding (pool_type "tok").
    torch.testing.assert_close(normed[:, -1, 0] @ visual.proj, pooled)
    assert not any(block._forward_hooks for block in visual.transformer.resblocks)  # hooks removed
    assert all(key.startswith("visual.") for key in vit_b32.state_dict())  # the tower is registered once


def test_open_clip_preprocess_uses_its_transform(vit_b32):
    pixels = vit_b32.preprocess(_uniform())
    assert pixels.shape == (3, 224, 224)
    expected = _expected_pixels((200, 30, 90), OPENAI_MEAN, OPENAI_STD)
    np.testing.assert_allclose(pixels[:, 100, 100].numpy(), expected, atol=2e-2)
    rgba = Image.new("RGBA", (30, 30), (0, 0, 0, 0))  # transparent -> white, as the other encoders do
    np.testing.assert_allclose(vit_b32.preprocess(rgba)[:, 5, 5].numpy(),
                               _expected_pixels((255, 255, 255), OPENAI_MEAN, OPENAI_STD), atol=1e-4)


def test_open_clip_attention_pool_tower_has_no_final_norm():
    from open_clip.transformer import VisionTransformer

    visual = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0,
                               attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2, output_dim=16)
    with pytest.raises(ValueError, match="final_norm=False"):
        OpenCLIPEncoder(visual, transform=lambda image: image)
    encoder = OpenCLIPEncoder(visual, transform=lambda image: image, layers=2, final_norm=False)
    assert encoder(_images(32)).tokens.shape == (2, 2, 17, 32)


def test_open_clip_timm_tower_through_the_trunk(tmp_path):
    """EVA02-style tower (timm trunk inside open_clip), tiny config: blocks + trunk.norm + CLS/grid."""
    import open_clip

    config = {"embed_dim": 32, "vision_cfg": {"image_size": 224, "timm_model_name": "eva02_tiny_patch14_224",
                                              "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": None},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
              "custom_text": True}
    (tmp_path / "test-EVA02-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "test-EVA02-tiny.json")
    encoder = zoo.load_encoder("open_clip:test-EVA02-tiny", layers=2)
    trunk = encoder.model
    assert isinstance(encoder, TimmEncoder) and encoder.num_layers == 12 and encoder.grid == (16, 16)
    images = _images(224, batch=1)
    features = encoder(images)
    assert features.tokens.shape == (1, 2, 257, 192) and features.cls_index == 0
    with torch.no_grad():
        torch.testing.assert_close(features.tokens[:, -1], trunk.forward_features(images))  # norm(last block)
    assert encoder.preprocess(_uniform()).shape == (3, 224, 224)  # open_clip's transform, not timm's


def test_eva02_l14_structure_on_the_meta_device(monkeypatch):
    """The full EVA02-CLIP-L tower, built without weights: DePALM's eva-clip-L geometry (24 blocks,
    CLS + 16 x 16 tokens of 1024), and the same trunk as timm's eva02_large_patch14_clip_224.merged2b."""
    import open_clip
    import timm

    create = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: create(*a, **{**k, "device": "meta"}))
    with torch.device("meta"):
        encoder = zoo.load_encoder("open_clip:EVA02-L-14", final_norm=False)
        depalm = timm.create_model("eva02_large_patch14_clip_224.merged2b", pretrained=False, global_pool="",
                                   num_classes=0)
    assert isinstance(encoder, TimmEncoder) and encoder.kind == "vit"
    assert (encoder.num_layers, encoder.embed_dim, encoder.grid, encoder.num_raw_tokens) == (24, 1024, (16, 16), 257)
    assert encoder.has_cls and encoder.num_prefix == 1 and encoder.norm_name == "norm"
    assert isinstance(encoder.model.norm, torch.nn.LayerNorm) and encoder.num_tokens == 257
    ours = {k: tuple(v.shape) for k, v in encoder.model.state_dict().items() if not k.startswith("head.")}
    assert ours == {k: tuple(v.shape) for k, v in depalm.state_dict().items()}
    assert isinstance(depalm.norm, torch.nn.LayerNorm)  # present, and left out by DePALM's norm: null
    assert encoder.preprocess(_uniform()).shape == (3, 224, 224)


def test_eva02_l14_reading_on_a_scaled_down_trunk(monkeypatch):
    """The EVA02-CLIP-L code path (open_clip tower, timm Eva with rope, SwiGLU, scaled attention and
    MLP) at 2 blocks of width 64: raw block outputs as DePALM's block wrappers collect them, and the
    final norm as the trunk's own."""
    import timm

    create = timm.create_model

    def small(name, **kwargs):
        if name.startswith("eva02_large_patch14_clip_224"):
            kwargs.update(depth=2, embed_dim=64, num_heads=4)
        return create(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", small)
    encoder = zoo.load_encoder("open_clip:EVA02-L-14", layers=2, final_norm=False)
    trunk = encoder.model
    assert (encoder.num_layers, encoder.embed_dim, encoder.num_raw_tokens) == (2, 64, 257)
    images = _images(224)
    collected = []
    handles = [block.register_forward_hook(lambda m, i, o: collected.append(o)) for block in trunk.blocks]
    with torch.no_grad():
        final = trunk.forward_features(images)
    for handle in handles:
        handle.remove()
    features = encoder(images)
    assert features.tokens.shape == (2, 2, 257, 64) and features.cls_index == 0 and features.grid == (16, 16)
    torch.testing.assert_close(features.tokens, torch.stack(collected, 1))  # no final norm
    normed = encoder.with_selection(final_norm=True)(images).tokens
    torch.testing.assert_close(normed[:, -1], final)  # the trunk's norm(last block)
    with torch.no_grad():
        torch.testing.assert_close(normed[:, 0], trunk.norm(collected[0]))
    assert not torch.allclose(normed, features.tokens)


def test_open_clip_resize_mode_squash(vit_b32):
    squashed = zoo.load_encoder("open_clip:ViT-B-32", resize_mode="squash")
    image = Image.new("RGB", (90, 30), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 30, 30))  # the left third white
    assert squashed.preprocess(image).shape == (3, 224, 224)
    left = squashed.preprocess(image)[0, :, :60].mean()
    assert left > 1.5 and vit_b32.preprocess(image)[0, :, :60].mean() < 0  # centre crop: the white third is cut
    assert squashed.preprocess_config()["resize_mode"] == "squash" and "resize_mode" not in vit_b32.preprocess_config()
    with pytest.raises(ValueError, match="resize_mode='stretch' is unknown"):
        zoo.load_encoder("open_clip:ViT-B-32", resize_mode="stretch")


def test_eva02_l14_weights_are_the_timm_repository_of_merged2b(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="timm/eva02_large_patch14_clip_224.merged2b_s4b_b131k"):
        zoo.load_encoder("open_clip:EVA02-L-14:merged2b_s4b_b131k")


def test_open_clip_tags_come_from_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download timm/vit_base_patch32_clip_224.openai"):
        zoo.load_encoder("open_clip:ViT-B-32:openai")
    with pytest.raises(ValueError, match="valid tags"):
        zoo.load_encoder("open_clip:ViT-B-32:no-such-tag")
    snapshot = tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    path, cfg = cached_open_clip_weights("ViT-B-32", "openai")
    assert path == str(snapshot / "open_clip_model.safetensors") and cfg["quick_gelu"] is True


# -- timm ------------------------------------------------------------------------------------------
def test_timm_vit_blocks_norm_and_preprocess():
    encoder = zoo.load_encoder("timm:vit_tiny_patch16_224", layers=3)
    assert (encoder.num_layers, encoder.embed_dim, encoder.grid, encoder.num_raw_tokens) == (12, 192, (14, 14), 197)
    images = _images(224, batch=1)
    features = encoder(images)
    assert features.tokens.shape == (1, 3, 197, 192) and features.cls_index == 0
    with torch.no_grad():
        torch.testing.assert_close(features.tokens[:, -1], encoder.model.forward_features(images))
        x = encoder.model.norm_pre(encoder.model._pos_embed(encoder.model.patch_embed(images)))
        for block in encoder.model.blocks[:10]:
            x = block(x)
    torch.testing.assert_close(features.tokens[:, 0], encoder.model.norm(x))  # layer 9 of 12
    assert encoder.with_selection(tokens="patches")(images).tokens.shape == (1, 3, 196, 192)
    pixels = encoder.preprocess(_uniform())
    assert pixels.shape == (3, 224, 224)  # resolve_data_config: mean = std = 0.5 for this model
    expected = _expected_pixels((200, 30, 90), (0.5,) * 3, (0.5,) * 3)
    np.testing.assert_allclose(pixels[:, 50, 50].numpy(), expected, atol=1e-2)


def test_timm_register_tokens_are_dropped():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, reg_tokens=4,
                              num_classes=0).eval()
    encoder = TimmEncoder(model, name="tiny-reg4")
    assert model.num_prefix_tokens == 5 and encoder.num_raw_tokens == 17
    images = _images(32)
    with torch.no_grad():
        full = model.forward_features(images)  # [CLS, 4 registers, 16 patches]
    torch.testing.assert_close(encoder(images).tokens[:, 0], torch.cat([full[:, :1], full[:, 5:]], dim=1))


def test_timm_cnn_final_map_and_global_token():
    encoder = zoo.load_encoder("timm:resnet18")
    assert (encoder.num_layers, encoder.embed_dim, encoder.grid, encoder.has_cls) == (1, 512, (7, 7), True)
    images = _images(224, batch=1)
    tokens = encoder(images).tokens[:, 0]
    with torch.no_grad():
        fmap = encoder.model.forward_features(images)
    assert tokens.shape == (1, 50, 512)
    torch.testing.assert_close(tokens[:, 1:], fmap.flatten(2).transpose(1, 2))
    torch.testing.assert_close(tokens[:, 0], fmap.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="valid: 1..1"):
        encoder.with_selection(layers=2)
    pixels = encoder.preprocess(_uniform())
    np.testing.assert_allclose(pixels[:, 112, 112].numpy(),
                               _expected_pixels((200, 30, 90), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), atol=2e-2)


def test_timm_pretrained_reads_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match="download timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"):
        zoo.load_encoder("timm:vit_tiny_patch16_224:pretrained")
    with pytest.raises(ValueError, match="':pretrained' or nothing"):
        zoo.load_encoder("timm:vit_tiny_patch16_224:weights")
    import timm

    torch.manual_seed(3)
    source = timm.create_model("vit_tiny_patch16_224")
    repo = tmp_path / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    (repo / "snapshots" / "c0ffee").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    save_file(source.state_dict(), str(repo / "snapshots" / "c0ffee" / "model.safetensors"))
    encoder = zoo.load_encoder("timm:vit_tiny_patch16_224:pretrained")
    torch.testing.assert_close(encoder.model.blocks[7].mlp.fc1.weight, source.blocks[7].mlp.fc1.weight)
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
