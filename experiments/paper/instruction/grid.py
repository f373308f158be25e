"""The instruction-tuning comparison of Garg & Bas 2023 (*On the Performance of Multimodal Language
Models*) under controlled conditions: the five systems with the same packaged backbones
(EfficientNet-Lite0 + SmolLM2-135M-Instruct), the same embedded data (easy-instruct) and the same
budget, each trained in its two stages (``align`` on captions, then ``instruct`` on every task
family), plus the study's ablations, 3 seeds each.

    python experiments/paper/instruction/grid.py write            # commands.txt (one line per run)
    python experiments/paper/instruction/grid.py run --system S [--variant V] --seed N [--dry-run]
    perceptlm report runs/instruction                              # the table (one column per metric)

A run is three commands: ``fit`` (align), ``fit`` (instruct, ``init_from`` the align checkpoint),
``test`` (with the blind baseline: perception zeroed). Sizes are CPU-scale (``SCALE``): the Q-Formers
are 256 wide with 2 layers and 8 queries, and every system reads the encoder's last layer
(EfficientNet-Lite0 has one readable layer; the papers read the ViT's penultimate one).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = "experiments/configs"
RUNS = "runs/instruction"
SEEDS = (0, 1, 2)
SYSTEMS = ("blip2", "instructblip", "llava", "minigpt4", "mplug-owl")
QFORMER = json.dumps({"width": 256, "num_layers": 2, "num_heads": 4, "num_queries": 8})
SCALE = {"blip2": QFORMER, "instructblip": QFORMER, "minigpt4": QFORMER, "mplug-owl": QFORMER}
ALIGN_STEPS, INSTRUCT_STEPS, BATCH = 60, 120, 8
# The stage-2 learning rate of a fully tuned LLM, scaled to this budget: LLaVA's 2e-5 is set for
# thousands of steps of 128; at 120 steps of 8 it hardly moves the LLM (variant ``paper-lr``). The
# other systems keep their recipe's rate (a frozen LLM, or mPLUG-Owl's LoRA at 2e-4).
LLM_LR = {"llava": "1e-4"}


@dataclass(frozen=True)
class Variant:
    """A change to a system's default run: extra arguments per stage, and the share of the default
    budget of records each stage sees (``steps x BATCH``; 0.1 = 10% of the data)."""

    instruct: tuple[str, ...] = ()
    align: tuple[str, ...] = ()
    instruct_data: float = 1.0
    align_data: float = 1.0


# The study's ablations, on LLaVA (Garg & Bas §3): stage-2 LLM tuning, instruction data amount,
# alignment data amount, and the head (projector) trained or frozen in stage 2. The instruction-aware
# head on/off is InstructBLIP vs BLIP-2. A stage sees less than one epoch of its data, so a data amount
# is the number of records seen (the steps), not the size of the pool they are drawn from; 400% shows
# what a larger budget adds. ``text-oracle`` is a control, not an interface: the first turn also states
# the image's colour and shape, the ceiling of what perception can add with this LLM, recipe and budget.
# ``yesno-reasoned`` is a control too: the training yes/no answers state what the image shows first
# ("a yellow circle, so no."), so the model compares two words of its own text, not the image with a word;
# ``reasoned`` also states the chosen option before its letter in multiple choice ("yellow circle, so B.").
# ``reasoned-itc`` adds BLIP-2's image-text contrastive loss to the alignment stage (weight 1): it keeps
# a Q-Former's outputs image-specific while it learns to prompt the frozen LLM.
# The study's ablations also run on the ``reasoned`` recipe (``reasoned-<ablation>``), the one in which
# perception can show on every task family. ``reasoned-instruct-400pct`` gives it four times the
# instruction steps: the five systems compared again at a budget where a frozen LLM also learns to use
# the image.
STUDY_ABLATIONS: dict[str, Variant] = {
    "llm-frozen": Variant(instruct=("--model.init_args.llm_tuning", "frozen")),
    "llm-lora": Variant(instruct=("--model.init_args.llm_tuning", "lora", "--model.init_args.llm_lr", "2e-4")),
    "instruct-10pct": Variant(instruct_data=0.1),
    "instruct-50pct": Variant(instruct_data=0.5),
    "align-10pct": Variant(align_data=0.1),
    "head-frozen": Variant(instruct=("--model.init_args.freeze_connector", "true")),
}
REASONED = ("--data.init_args.reasoned", "true")
VARIANTS: dict[str, Variant] = {
    "default": Variant(),
    **STUDY_ABLATIONS,
    "instruct-400pct": Variant(instruct_data=4.0),
    "align-400pct": Variant(align_data=4.0),
    "text-oracle": Variant(instruct=("--data.init_args.describe", "true")),
    "paper-lr": Variant(instruct=("--model.init_args.llm_lr", "2e-5")),
    "yesno-reasoned": Variant(instruct=("--data.init_args.reasoned", "[yesno]")),
    "reasoned": Variant(instruct=REASONED),
    "reasoned-itc": Variant(instruct=REASONED, align=("--model.init_args.itc_weight", "1.0")),
    **{f"reasoned-{name}": replace(variant, instruct=(*REASONED, *variant.instruct))
       for name, variant in STUDY_ABLATIONS.items()},
    "reasoned-instruct-400pct": Variant(instruct=REASONED, instruct_data=4.0),
}


@dataclass(frozen=True)
class Cell:
    system: str
    variant: str
    seed: int

    @property
    def run_dir(self) -> str:
        return f"{RUNS}/{self.system}-{self.variant}/seed{self.seed}"


# The systems each variant runs on; a variant not named here is an ablation or control of LLaVA's.
# The five systems run their own recipe, the reasoned one and the reasoned one with four times the
# instruction steps (the comparison); BLIP-2, the canonical frozen-LLM system, also runs the contrastive
# alignment and the larger budget of its own recipe.
SYSTEMS_OF: dict[str, tuple[str, ...]] = {
    "default": SYSTEMS,
    "reasoned": SYSTEMS,
    "reasoned-itc": ("blip2",),
    "yesno-reasoned": ("llava", "blip2"),
    "instruct-400pct": ("llava", "blip2"),
    "reasoned-instruct-400pct": SYSTEMS,
}


def cells() -> list[Cell]:
    """Every run of the comparison, variant by variant (the five systems' recipes first), 3 seeds each.
    Within a variant BLIP-2 comes before MiniGPT-4, which freezes BLIP-2's aligned Q-Former."""
    return [Cell(system, variant, seed) for variant in VARIANTS for system in SYSTEMS_OF.get(variant, ("llava",))
            for seed in SEEDS]


def _model(cell: Cell, stage: str) -> list[str]:
    args = ["--config", f"{CONFIGS}/mechanisms/{cell.system}.yaml", "--config", f"{CONFIGS}/data/easy_instruct.yaml",
            "--config", f"{CONFIGS}/trainer/cpu.yaml",
            "--model.init_args.encoder", "efficientnet-lite0", "--model.init_args.llm", "smollm2-135m-instruct",
            "--model.init_args.features", '{"layers": 1}', "--model.init_args.stage", stage,
            "--model.init_args.max_new_tokens", "12", "--model.init_args.num_beams", "1",
            "--data.init_args.batch_size", str(BATCH), "--data.init_args.test_images", "25",
            "--data.init_args.seed", str(cell.seed), "--seed_everything", str(cell.seed),
            "--trainer.logger.init_args.project", "perceptlm-instruction",
            "--trainer.logger.init_args.group", f"{cell.system}-{cell.variant}"]
    if cell.system in SCALE:
        args += ["--model.init_args.connector", SCALE[cell.system]]
    if stage == "instruct" and cell.system in LLM_LR:
        args += ["--model.init_args.llm_lr", LLM_LR[cell.system]]
    return args


def _last_checkpoint(run_dir: str) -> list[str]:
    """A ModelCheckpoint writing ``<run_dir>/checkpoints/last.ckpt`` at the end of training."""
    return ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", f"{run_dir}/checkpoints",
            "--trainer.callbacks.save_last", "true", "--trainer.callbacks.save_top_k", "0"]


def stage_commands(cell: Cell) -> list[list[str]]:
    """align fit, instruct fit (from the align checkpoint), instruct test with the blind baseline."""
    variant = VARIANTS[cell.variant]
    align_dir, instruct_dir = f"{cell.run_dir}/align", cell.run_dir
    align = ["fit", *_model(cell, "align"), "--data.init_args.family", "caption", *variant.align,
             "--trainer.max_steps", str(round(ALIGN_STEPS * variant.align_data)), "--trainer.limit_val_batches", "0",
             "--trainer.default_root_dir", align_dir, "--trainer.logger.init_args.save_dir", align_dir,
             *_last_checkpoint(align_dir)]
    if cell.system == "minigpt4":  # MiniGPT-4 keeps BLIP-2's aligned Q-Former frozen (aligned as this variant aligns)
        source = Cell("blip2", cell.variant if variant.align else "default", cell.seed)
        connector = {**json.loads(SCALE["minigpt4"]), "init_from": f"{source.run_dir}/align/checkpoints/last.ckpt"}
        align += ["--model.init_args.connector", json.dumps(connector)]
    checkpoint = f"{align_dir}/checkpoints/last.ckpt"
    common = [*_model(cell, "instruct"), *variant.instruct, "--trainer.default_root_dir", instruct_dir,
              "--trainer.logger.init_args.save_dir", instruct_dir]
    instruct = ["fit", *common, "--model.init_args.init_from", checkpoint,
                "--trainer.max_steps", str(round(INSTRUCT_STEPS * variant.instruct_data)),
                "--trainer.limit_val_batches", "0", *_last_checkpoint(instruct_dir)]
    test = ["test", *common, "--model.init_args.eval_blind", "true",
            "--ckpt_path", f"{instruct_dir}/checkpoints/last.ckpt"]
    return [align, instruct, test]


def command_line(cell: Cell) -> str:
    return " && ".join(shlex.join(["perceptlm", *args]) for args in stage_commands(cell))


def write(out: Path) -> Path:
    path = out / "commands.txt"
    header = ("# Garg & Bas 2023 comparison on the embedded set: one line per run (align, instruct, test), from the\n"
              "# repository root. Generated by experiments/paper/instruction/grid.py write; do not edit by hand.\n")
    path.write_text(header + "".join(command_line(c) + "\n" for c in cells()))
    return path


def run(cell: Cell, dry_run: bool = False) -> int:
    """The cell's three commands in order; a fit whose ``last.ckpt`` exists is not run again."""
    for args in stage_commands(cell):
        if args[0] == "fit" and Path(args[args.index("--trainer.callbacks.dirpath") + 1], "last.ckpt").exists():
            print(f"skipped (checkpoint exists): {shlex.join(['perceptlm', *args])}", flush=True)
            continue
        print(shlex.join(["perceptlm", *args]), flush=True)
        if not dry_run:
            code = subprocess.call([sys.executable, "-m", "perceptlm.cli", *args])
            if code:
                return code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("write").add_argument("--out", type=Path, default=HERE)
    one = sub.add_parser("run")
    one.add_argument("--system", choices=SYSTEMS, required=True)
    one.add_argument("--variant", choices=list(VARIANTS), default="default")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--dry-run", action="store_true")
    options = parser.parse_args(argv)
    if options.command == "write":
        print(write(options.out))
        return 0
    return run(Cell(options.system, options.variant, options.seed), options.dry_run)


if __name__ == "__main__":
    sys.exit(main())
