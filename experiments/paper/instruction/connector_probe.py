"""What the LLM receives from a trained interface: how much of its perceptual tokens changes with
the image, and whether the image's colour and shape can still be read from them.

For each run folder (a stage's folder: ``config.yaml`` and ``checkpoints/last.ckpt``; the ``align``
folder too) the script runs the interface on the caption records of ``--images`` test images (the
run's own caption instruction, so InstructBLIP's queries read it) and reports:

* **image share**: per perceptual-token position, ``sqrt(variance over images) / RMS norm``, averaged
  over positions. 0: the LLM gets the same tokens whatever the image (a fixed soft prompt); 1: the
  tokens have no part shared by all images.
* **colour / shape**: 5-fold cross-validated accuracy of the linear probe of ``encoder_probe.py``
  (softmax regression by L-BFGS, standardised inputs) on the mean of the perceptual tokens, next to
  the majority class. The encoder's own pooled features give 89.7 / 97.3 (``encoder_probe.py``).

A high probe accuracy with a low image share says the information is there but rides on a large
image-independent part: the frozen LLM mostly sees a constant prompt.

    python experiments/paper/instruction/connector_probe.py RUN_DIR [RUN_DIR ...] [--images 400] [--out probe.md]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent


def _sibling(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


encoder_probe, yesno_margin = _sibling("encoder_probe"), _sibling("yesno_margin")


@torch.no_grad()
def perceptual_tokens(model: Any, datamodule: Any) -> tuple[torch.Tensor, list[str]]:
    """``[N, K, H]``: the tokens the LLM receives for each caption test record, and its reference caption."""
    datamodule.setup("test")  # load_run has connected it to the model
    tokens, captions = [], []
    for batch in datamodule.test_dataloader():
        visual = model.perceive(batch.media, instruction=(batch.prompt_ids, batch.prompt_mask))
        tokens.append(visual.flatten(1, -2).float())
        captions += [references[0] for references in batch.references]
    return torch.cat(tokens), captions


def image_share(tokens: torch.Tensor) -> float:
    """Mean over token positions of ``sqrt(variance over images) / RMS norm`` of ``tokens [N, K, H]``."""
    if len(tokens) < 2:
        raise ValueError(f"the image share needs at least 2 images, got {len(tokens)}")
    spread = (tokens - tokens.mean(0)).square().sum(-1).mean(0).sqrt()
    size = tokens.square().sum(-1).mean(0).sqrt()
    return (spread / size.clamp_min(1e-12)).mean().item()


def cross_validated(features: torch.Tensor, labels: torch.Tensor, classes: int, folds: int = 5) -> float:
    """Accuracy of :func:`encoder_probe.probe` over ``folds`` folds (each fold's statistics standardise it)."""
    if len(features) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} samples, got {len(features)}")
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(0))
    right = 0.0
    for fold in order.tensor_split(folds):
        train = torch.ones(len(features), dtype=torch.bool)
        train[fold] = False
        mean, std = features[train].mean(0), features[train].std(0) + 1e-6
        accuracy = encoder_probe.probe((features[train] - mean) / std, labels[train], (features[fold] - mean) / std,
                                       labels[fold], classes)
        right += accuracy * len(fold)
    return right / len(features)


def measure(run: Path, images: int) -> dict[str, float]:
    from perceptlm.data.easyvqa import COLORS, SHAPES

    model, datamodule = yesno_margin.load_run(run, family="caption", test_images=images)
    tokens, captions = perceptual_tokens(model, datamodule)
    out = {"images": float(len(captions)), "image share": image_share(tokens)}
    pooled = tokens.mean(1)
    words = [caption.split() for caption in captions]
    for name, vocabulary, position in (("colour", COLORS, -2), ("shape", SHAPES, -1)):
        unknown = sorted({" ".join(w) for w in words if len(w) < 2 or w[position] not in vocabulary})
        if unknown:
            raise ValueError(f"{run}: captions whose {name} is not one of {list(vocabulary)}: {unknown[:3]}")
        labels = torch.tensor([vocabulary.index(w[position]) for w in words])
        out[name] = 100 * cross_validated(pooled, labels, len(vocabulary))
        out[f"{name} majority"] = 100 * labels.bincount().max().item() / len(labels)
    return out


def markdown(results: dict[str, dict[str, float]]) -> str:
    lines = ["| run | images | image share | colour probe (majority) | shape probe (majority) |", "|---|---|---|---|---|"]
    lines += [f"| {run} | {r['images']:.0f} | {r['image share']:.3f} | {r['colour']:.1f} ({r['colour majority']:.1f}) | "
              f"{r['shape']:.1f} ({r['shape majority']:.1f}) |" for run, r in results.items()]
    lines.append("")
    lines.append("Image share: per token position, sqrt(variance over images) / RMS norm of the perceptual tokens, mean "
                 "over positions (0: the same tokens for every image). Probes: 5-fold cross-validated accuracy of a "
                 "linear probe on the mean perceptual token, percent.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="stage folders (config.yaml, checkpoints/last.ckpt)")
    parser.add_argument("--images", type=int, default=400, help="test images (caption records)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    options = parser.parse_args(argv)
    return yesno_margin.publish(markdown({str(run): measure(run, options.images) for run in options.runs}), options.out)


if __name__ == "__main__":
    main()
