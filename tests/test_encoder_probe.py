"""The linear probe of the instruction comparison (experiments/paper/instruction/encoder_probe.py)."""

import importlib.util
from pathlib import Path

import torch

PATH = Path(__file__).resolve().parents[1] / "experiments/paper/instruction/encoder_probe.py"
spec = importlib.util.spec_from_file_location("encoder_probe", PATH)
encoder_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(encoder_probe)


def test_probe_separates_separable_classes_and_not_random_labels():
    generator = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(4, 16, generator=generator)
    labels = torch.randint(0, 4, (400,), generator=generator)
    points = centres[labels] + torch.randn(400, 16, generator=generator)
    assert encoder_probe.probe(points[:300], labels[:300], points[300:], labels[300:], 4) > 0.95
    shuffled = labels[torch.randperm(400, generator=generator)]
    assert encoder_probe.probe(points[:300], shuffled[:300], points[300:], shuffled[300:], 4) < 0.5


def test_budget_probe_learns_separable_classes_within_its_steps_and_not_random_labels():
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(4, 16, generator=generator)
    labels = torch.randint(0, 4, (400,), generator=generator)
    points = centres[labels] + 0.1 * torch.randn(400, 16, generator=generator)
    train, test = slice(0, 300), slice(300, 400)
    assert encoder_probe.budget_probe(points[train], labels[train], points[test], labels[test], 4) > 0.95
    assert encoder_probe.budget_probe(points[train], labels[train], points[test], labels[test], 4, steps=1) < 0.6
    shuffled = labels[torch.randperm(400, generator=generator)]
    assert encoder_probe.budget_probe(points[train], shuffled[train], points[test], shuffled[test], 4) < 0.5


def test_pooled_features_are_the_mean_of_the_final_map_of_known_images():
    from perceptlm.zoo import efficientnet_lite0_encoder

    encoder = efficientnet_lite0_encoder().eval()
    features, facts = encoder_probe.pooled_features(encoder, "test", 3, batch=2)
    assert features.shape == (3, 1280) and all(f.description is not None for f in facts)
    tokens = encoder.hidden_states(torch.stack([encoder.preprocess(
        encoder_probe.Image.open(encoder_probe.default_root() / "test" / "images" / f"{facts[0].image_id}.png"))]), [0])[0][0]
    torch.testing.assert_close(features[0], tokens[0, 0], rtol=1e-4, atol=1e-4)  # the global token
