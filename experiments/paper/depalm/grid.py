"""The DePALM main table as runs: every mechanism x benchmark x seed of Vallaeys et al. 2024
(*Improved Baselines for Data-efficient Perceptual Augmentation of LLMs*, the main comparison table:
10 mechanisms, 10 benchmark columns, 5-run means).

    python experiments/paper/depalm/grid.py write [--out DIR]     # commands.txt + sweeps/<dataset>.yaml
    python experiments/paper/depalm/grid.py run --dataset D --mechanism M --fraction F --seed S [--dry-run]

``write`` regenerates the committed files. ``run`` runs one cell (``perceptlm fit`` then
``perceptlm test``); the W&B sweeps call it. Paths are relative to the repository root, where
commands and sweep agents run. Pure standard library (+ PyYAML for the sweep files).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
PROGRAM = "experiments/paper/depalm/grid.py"
CONFIGS = "experiments/configs"
RUNS = "runs/depalm"
PROJECT = "perceptlm-depalm"
SEEDS = (0, 1, 2, 3, 4)  # DePALM reports 5-run means
LLM = "huggyllama/llama-7b"  # LLaMA-7B (DePALM's default LLM), read from the local Hugging Face cache
NUM_WORKERS = 8

# The table's rows, in its order: perceptlm preset -> the paper's name.
MECHANISMS = {
    "limber-1": "LiMBeR(1)",
    "limber-all": "LiMBeR(all)",
    "mapl": "MAPL",
    "epalm": "eP-ALM",
    "depalm-qp-l0": "QP,L0",
    "depalm-qp-inner": "QP,inner",
    "depalm-r-avgpool": "R-avgpool",
    "depalm-r-linear": "R-linear",
    "depalm-r-qpmapper": "R-QPMapper",
    "depalm-r-rand": "R-rand",
}

# Frozen encoders per modality (DePALM: CLIP ViT-L/14 for images, TimeSformer for video; for audio
# its MAViL weights are not public, CLAP is the paper's alternative audio backbone).
ENCODERS = {
    "image": "open_clip:ViT-L-14:openai",
    "video": "timesformer:facebook/timesformer-base-finetuned-k400",
    "audio": "clap:laion/clap-htsat-unfused",
}


@dataclass(frozen=True)
class Benchmark:
    modality: str
    epochs: dict[float, int]  # training fraction -> epochs (DePALM §4)


# The table's columns: data config name -> modality and the fractions it is trained on.
DATASETS = {
    "coco_karpathy": Benchmark("image", {1.0: 8, 0.01: 30}),
    "vqav2": Benchmark("image", {1.0: 8, 0.01: 30}),
    "textcaps": Benchmark("image", {1.0: 20}),
    "textvqa": Benchmark("image", {1.0: 20}),
    "okvqa": Benchmark("image", {1.0: 20}),
    "aokvqa": Benchmark("image", {1.0: 20}),
    "audiocaps": Benchmark("audio", {1.0: 12}),
    "msrvtt": Benchmark("video", {1.0: 8}),  # the paper gives no count: its default, 8
}

# Cell-specific arguments. LiMBeR(all) would put 1 + 8x196 TimeSformer tokens at L0: like DePALM's
# runs that overflow memory, it reads the tokens averaged over time (197).
EXTRA = {("limber-all", "msrvtt"): ["--model.init_args.features", '{"temporal": "mean"}']}


@dataclass(frozen=True)
class Cell:
    mechanism: str
    dataset: str
    fraction: float
    seed: int

    @property
    def label(self) -> str:
        return f"{self.dataset}-{fraction_label(self.fraction)}-{self.mechanism}"

    @property
    def run_dir(self) -> str:
        return f"{RUNS}/{self.dataset}/{fraction_label(self.fraction)}/{self.mechanism}/seed{self.seed}"


def fraction_label(fraction: float) -> str:
    return f"{fraction * 100:g}pct"


def cells() -> list[Cell]:
    """Every run of the table, in a fixed order: dataset, fraction (100% first), mechanism, seed."""
    return [Cell(m, d, f, s) for d, bench in DATASETS.items() for f in sorted(bench.epochs, reverse=True)
            for m in MECHANISMS for s in SEEDS]


def check(cell: Cell) -> None:
    if cell.mechanism not in MECHANISMS:
        raise ValueError(f"unknown mechanism {cell.mechanism!r}; valid: {', '.join(MECHANISMS)}")
    if cell.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cell.dataset!r}; valid: {', '.join(DATASETS)}")
    if cell.fraction not in DATASETS[cell.dataset].epochs:
        raise ValueError(f"{cell.dataset} has no {cell.fraction:g} column; valid: "
                         f"{', '.join(f'{f:g}' for f in DATASETS[cell.dataset].epochs)}")


def config_files(cell: Cell) -> list[str]:
    return [f"{CONFIGS}/mechanisms/{cell.mechanism}.yaml", f"{CONFIGS}/data/{cell.dataset}.yaml",
            f"{CONFIGS}/trainer/gpu.yaml"]


def _common(cell: Cell, job: str) -> list[str]:
    args = [part for path in config_files(cell) for part in ("--config", path)]
    fraction = "null" if cell.fraction == 1.0 else f"{cell.fraction:g}"
    args += [
        "--model.init_args.encoder", ENCODERS[DATASETS[cell.dataset].modality],
        "--model.init_args.llm", LLM,
        *EXTRA.get((cell.mechanism, cell.dataset), []),
        "--data.init_args.fraction", fraction,
        "--data.init_args.seed", str(cell.seed),  # the low-data subset and the shuffle
        "--data.init_args.num_workers", str(NUM_WORKERS),
        "--seed_everything", str(cell.seed),  # initialisation, dropout, augmentation
        "--trainer.default_root_dir", cell.run_dir,  # results.json + predictions.jsonl
        "--trainer.logger.init_args.project", PROJECT,
        "--trainer.logger.init_args.save_dir", cell.run_dir,
        "--trainer.logger.init_args.name", f"{cell.label}-seed{cell.seed}",
        "--trainer.logger.init_args.group", cell.label,  # the 5 seeds of one table cell
        "--trainer.logger.init_args.job_type", job,
    ]
    return args


def fit_args(cell: Cell) -> list[str]:
    """``perceptlm fit`` arguments: the three configs, backbones, data subset, seeds, the paper's
    epochs for this benchmark, W&B naming, and a checkpoint of the last step."""
    check(cell)
    return ["fit", *_common(cell, "fit"),
            "--trainer.max_epochs", str(DATASETS[cell.dataset].epochs[cell.fraction]),
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", f"{cell.run_dir}/checkpoints",
            "--trainer.callbacks.save_last", "true",
            "--trainer.callbacks.save_top_k", "0"]


def test_args(cell: Cell) -> list[str]:
    """``perceptlm test`` arguments: the same composition, scored from the last checkpoint."""
    check(cell)
    return ["test", *_common(cell, "test"), "--ckpt_path", f"{cell.run_dir}/checkpoints/last.ckpt"]


def command_line(cell: Cell) -> str:
    return shlex.join(["perceptlm", *fit_args(cell)]) + " && " + shlex.join(["perceptlm", *test_args(cell)])


def sweep(dataset: str) -> dict:
    """A W&B grid sweep over one dataset's cells; each run calls ``grid.py run`` (fit, then test)."""
    bench = DATASETS[dataset]
    return {
        "name": f"depalm-{dataset}",
        "description": f"DePALM main table, {dataset}: mechanisms x fractions x seeds",
        "project": PROJECT,
        "program": PROGRAM,
        "method": "grid",
        "parameters": {
            "mechanism": {"values": list(MECHANISMS)},
            "fraction": {"values": sorted(bench.epochs, reverse=True)},
            "seed": {"values": list(SEEDS)},
        },
        "command": ["${env}", "${interpreter}", "${program}", "run", f"--dataset={dataset}", "${args}"],
    }


def write(out: Path) -> list[Path]:
    """``commands.txt`` (one line per cell) and ``sweeps/<dataset>.yaml`` under ``out``."""
    (out / "sweeps").mkdir(parents=True, exist_ok=True)
    header = ("# DePALM main table: one line per run (mechanism x benchmark x seed), from the repository root.\n"
              "# Generated by experiments/paper/depalm/grid.py write; do not edit by hand.\n")
    paths = [out / "commands.txt"]
    paths[0].write_text(header + "".join(command_line(c) + "\n" for c in cells()))
    for dataset in DATASETS:
        path = out / "sweeps" / f"{dataset}.yaml"
        text = yaml.safe_dump(sweep(dataset), sort_keys=False, default_flow_style=False, width=120)
        path.write_text(f"# wandb sweep {PROGRAM.rsplit('/', 1)[0]}/sweeps/{dataset}.yaml, then: wandb agent "
                        f"ENTITY/{PROJECT}/SWEEP_ID (from the repository root)\n# Generated by grid.py write.\n" + text)
        paths.append(path)
    return paths


def run(cell: Cell, dry_run: bool = False) -> int:
    """Fit, then test. Under a W&B sweep agent the test resumes the agent's run, so the test
    metrics land on the same run as the training curves."""
    for args in (fit_args(cell), test_args(cell)):
        command = [sys.executable, "-m", "perceptlm.cli", *args]
        print(shlex.join(command), flush=True)
        if dry_run:
            continue
        env = dict(os.environ)
        if args[0] == "test" and env.get("WANDB_RUN_ID"):
            env.setdefault("WANDB_RESUME", "allow")
        code = subprocess.run(command, env=env).returncode
        if code:
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    writer = commands.add_parser("write", help="write commands.txt and sweeps/")
    writer.add_argument("--out", type=Path, default=HERE)
    runner = commands.add_parser("run", help="run one cell: perceptlm fit, then perceptlm test")
    runner.add_argument("--dataset", required=True, choices=list(DATASETS))
    runner.add_argument("--mechanism", required=True, choices=list(MECHANISMS))
    runner.add_argument("--fraction", required=True, type=float)
    runner.add_argument("--seed", required=True, type=int)
    runner.add_argument("--dry-run", action="store_true", help="print the two commands only")
    options = parser.parse_args(argv)
    if options.command == "write":
        for path in write(options.out):
            print(path)
        return 0
    return run(Cell(options.mechanism, options.dataset, options.fraction, options.seed), options.dry_run)


if __name__ == "__main__":
    sys.exit(main())
