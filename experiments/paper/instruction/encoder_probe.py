"""How much colour and shape the packaged image encoder carries: a linear probe.

Fits a softmax regression (L-BFGS, L2 1e-3, standardised features) on EfficientNet-Lite0's pooled
final feature map, the global token every interface reads, for easy-VQA's colour and shape, on
``--train`` training images, and reports accuracy on ``--test`` test images next to the majority
class. A high probe accuracy where a trained interface answers near its blind baseline says the
limit is the interface's training, not the encoder. A second probe has the interfaces' budget: a
linear head on the raw (unstandardised) features, as the interfaces read them, trained by AdamW at
LLaVA's rate for as many steps of 8 as the two stages have (60 + 120), mean over three seeds. Where
it learns what the interface does not, the limit is the route through the LLM, not the steps.

    python experiments/paper/instruction/encoder_probe.py [--train 800] [--test 400]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from perceptlm.data.easy_instruct import image_facts
from perceptlm.data.easyvqa import COLORS, SHAPES, default_root
from perceptlm.zoo import efficientnet_lite0_encoder


@torch.no_grad()
def pooled_features(encoder, split: str, count: int, batch: int = 50):
    """The global token ``[n, 1280]`` (the pooled final map, read through the encoder's own
    ``hidden_states``) of the first ``count`` images whose colour and shape are known."""
    root = default_root()
    facts = [f for f in image_facts(root, split) if f.description is not None][:count]
    features = []
    for start in range(0, len(facts), batch):
        images = [Image.open(root / split / "images" / f"{f.image_id}.png") for f in facts[start:start + batch]]
        (tokens,), _ = encoder.hidden_states(torch.stack([encoder.preprocess(im) for im in images]), [0])
        features.append(tokens[:, 0])
    return torch.cat(features), facts


def probe(train_x, train_y, test_x, test_y, classes: int, l2: float = 1e-3) -> float:
    """Test accuracy of an L2-regularised softmax regression fitted by L-BFGS."""
    weight = torch.zeros(train_x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(train_x @ weight + bias, train_y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((test_x @ weight + bias).argmax(1) == test_y).float().mean().item()


def budget_probe(train_x, train_y, test_x, test_y, classes: int, steps: int = 180, batch: int = 8,
                 lr: float = 8e-4, weight_decay: float = 0.1, seed: int = 0) -> float:
    """Test accuracy of a linear head trained by AdamW for ``steps`` steps of ``batch`` samples
    (epochs of a seeded permutation of the training set)."""
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(train_x.shape[1], classes)
    torch.nn.init.normal_(head.weight, std=0.02, generator=generator)
    torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    order = torch.cat([torch.randperm(len(train_x), generator=generator)
                       for _ in range(-(-steps * batch // len(train_x)))])
    for step in range(steps):
        chosen = order[step * batch:(step + 1) * batch]
        loss = torch.nn.functional.cross_entropy(head(train_x[chosen]), train_y[chosen])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (head(test_x).argmax(1) == test_y).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=800, help="training images (known colour and shape)")
    parser.add_argument("--test", type=int, default=400, help="test images (known colour and shape)")
    args = parser.parse_args(argv)
    encoder = efficientnet_lite0_encoder().eval()
    train_x, train_facts = pooled_features(encoder, "train", args.train)
    test_x, test_facts = pooled_features(encoder, "test", args.test)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    print("| attribute | linear probe accuracy | AdamW, 180 steps of 8, raw features | majority class |\n"
          "|---|---|---|---|")
    for name, vocabulary in (("color", COLORS), ("shape", SHAPES)):
        train_y = torch.tensor([vocabulary.index(getattr(f, name)) for f in train_facts])
        test_y = torch.tensor([vocabulary.index(getattr(f, name)) for f in test_facts])
        accuracy = probe((train_x - mean) / std, train_y, (test_x - mean) / std, test_y, len(vocabulary))
        budget = np.mean([budget_probe(train_x, train_y, test_x, test_y, len(vocabulary), seed=seed)
                          for seed in range(3)])
        majority = np.bincount(test_y.numpy()).max() / len(test_y)
        print(f"| {name} | {100 * accuracy:.1f} | {100 * budget:.1f} | {100 * majority:.1f} |")


if __name__ == "__main__":
    main()
