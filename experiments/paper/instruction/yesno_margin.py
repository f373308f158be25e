"""Does a trained system tell a present object from an absent one, whatever it answers?

POPE's metrics read the generated answer, so a model that leans to "no" scores near chance whether or
not it separates the cases. This script scores each yes/no test probe of a run by its margin
``log P("yes") - log P("no")``: the two answers' log-likelihoods as the run's chat template renders
them, given the probe and the image (the option likelihood of multiple choice). It reports, for the
trained model and for its blind twin (perception zeroed):

* AUC: the chance that a present probe's margin exceeds an absent one's, ties counting half (50 = the
  margins do not separate the cases, 100 = a threshold does), over all probes and per attribute;
* the mean margin of the present and of the absent probes (below zero: the model leans to "no").

It is meant for runs trained on short yes/no answers (not ``reasoned`` ones, whose answers start
with the description).

    python experiments/paper/instruction/yesno_margin.py RUN_DIR [RUN_DIR ...] [--out margins.md]

A RUN_DIR is a test run's folder: its ``config.yaml`` (the model and the data settings, read with the
yes/no family) and ``checkpoints/last.ckpt`` (the trained weights).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml

ATTRIBUTES = ("shape", "color")


def auc(scores: list[float], positive: list[bool]) -> float:
    """The area under the ROC curve in percent (Mann-Whitney: ties count half)."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        raise ValueError(f"AUC needs present and absent probes; got {len(pos)} present, {len(neg)} absent")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return 100.0 * wins / (len(pos) * len(neg))


def load_run(run: Path, family: str = "yesno", test_images: int | None = None) -> tuple[Any, Any]:
    """(module with the trained weights, its test datamodule of ``family``, connected to it) of a run
    folder; ``test_images``: how many test images (default: the run's)."""
    config_path, checkpoint = run / "config.yaml", run / "checkpoints" / "last.ckpt"
    for path in (config_path, checkpoint):
        if not path.is_file():
            raise FileNotFoundError(f"{run}: no {path.relative_to(run)}; expected a test run's folder")
    config = yaml.safe_load(config_path.read_text())
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise ValueError(f"{config_path}: expected a perceptlm config with 'model' and 'data'")
    from perceptlm.cli import cli
    from perceptlm.training.persistence import read_trainable_state

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        yaml.safe_dump({k: config[k] for k in ("seed_everything", "model", "data") if k in config}, handle)
        handle.flush()
        parsed = cli(["--config", handle.name, "--trainer.logger", "false", "--trainer.accelerator", "cpu",
                      "--data.init_args.family", family,
                      *(["--data.init_args.test_images", str(test_images)] if test_images else [])], run=False)
    model, datamodule = parsed.model.model, parsed.datamodule
    model.load_trainable(read_trainable_state(checkpoint), str(checkpoint))
    datamodule.connect(model)
    return model.eval(), datamodule


def margins(model: Any, datamodule: Any) -> list[dict[str, Any]]:
    """Per yes/no test probe: id, probe kind, whether present, and the trained and blind margins."""
    from perceptlm.evaluation.likelihood import option_loglikelihoods

    load = datamodule.load_samples

    def with_answers(split: str) -> list[Any]:  # both answers scored as the options of a question
        samples = load(split)
        for sample in samples:
            sample.extra["options"] = ["yes", "no"]
        return samples

    datamodule.load_samples = with_answers
    datamodule.setup("test")  # load_run has connected it to the model
    out = []
    for batch in datamodule.test_dataloader():
        seeing = option_loglikelihoods(model, batch)
        blind = option_loglikelihoods(model, batch, blind=True)
        for i, sample_id in enumerate(batch.ids):
            out.append({"id": sample_id, "probe": batch.meta[i]["probe"], "present": batch.references[i][0] == "yes",
                        "margin": seeing[i][0] - seeing[i][1], "blind_margin": blind[i][0] - blind[i][1]})
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """AUC overall and per attribute, and mean margins of present / absent probes, trained and blind."""
    out = {}
    for prefix, key in (("", "margin"), ("blind ", "blind_margin")):
        for name, subset in (("all", rows), *((a, [r for r in rows if r["probe"].startswith(a)]) for a in ATTRIBUTES)):
            out[f"{prefix}AUC {name}"] = auc([r[key] for r in subset], [r["present"] for r in subset])
        for present, title in ((True, "present"), (False, "absent")):
            out[f"{prefix}margin {title}"] = statistics.fmean(r[key] for r in rows if r["present"] == present)
    return out


def markdown(results: dict[str, dict[str, float]]) -> str:
    columns = list(next(iter(results.values())))
    lines = ["| run | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {run} | " + " | ".join(f"{values[c]:.1f}" if "AUC" in c else f"{values[c]:+.2f}" for c in columns) + " |"
              for run, values in results.items()]
    lines.append("")
    lines.append("AUC in percent (50: the margins do not separate present from absent probes); margin = log P(yes) - "
                 "log P(no), its mean over the present and over the absent probes; blind: perception zeroed.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="test run folders (config.yaml, checkpoints/last.ckpt)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    options = parser.parse_args(argv)
    return publish(markdown({str(run): summary(margins(*load_run(run))) for run in options.runs}), options.out)


def publish(text: str, out: Path | None) -> str:
    """Print the table, and write it to ``out`` too when given."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text


if __name__ == "__main__":
    main()
