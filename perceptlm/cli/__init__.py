"""The ``perceptlm`` command: LightningCLI's ``fit | validate | test | predict`` for every mechanism
and dataset, and the tools around them (``presets``, ``report``, ``dashboard``).

This module only dispatches: ``perceptlm --help`` and a tool's ``--help`` import nothing heavy; a
command imports what it needs when it runs (the Lightning stack for the trainer commands)."""

from __future__ import annotations

import importlib
import sys
from typing import Any

TRAINER_COMMANDS = {
    "fit": "train an interface: --config MECHANISM.yaml --config DATA.yaml --config TRAINER.yaml",
    "validate": "one evaluation epoch on the validation split (--ckpt_path CHECKPOINT)",
    "test": "evaluate on the test split (--ckpt_path CHECKPOINT): results.json, predictions.jsonl",
    "predict": "generate answers for the prediction split (--ckpt_path CHECKPOINT)",
}
# tool -> (module with main(args), one line)
TOOLS = {
    "presets": ("perceptlm.cli.presets", "every mechanism with its trainable parameters and perceptual tokens"),
    "report": ("perceptlm.evaluation.report", "results.json files -> the papers' comparison table (Markdown, CSV, PNG)"),
    "dashboard": ("perceptlm.cli.dashboard", "the W&B comparison workspace of a group of runs (offline: its spec)"),
}
_LAZY = {"cli": "perceptlm.cli.lightning", "PerceptLMCLI": "perceptlm.cli.lightning",
         "presets_table": "perceptlm.cli.presets"}


def usage() -> str:
    """The command's help: every subcommand with one line."""
    width = max(map(len, [*TRAINER_COMMANDS, *TOOLS])) + 2
    lines = ["usage: perceptlm COMMAND [options]", "",
             "Give frozen LLMs perception: train and compare interfaces between frozen perceptual encoders",
             "and frozen LLMs.", "", "training (Lightning):"]
    lines += [f"  {name:<{width}}{text}" for name, text in TRAINER_COMMANDS.items()]
    lines += ["", "tools:"] + [f"  {name:<{width}}{text}" for name, (_, text) in TOOLS.items()]
    lines += ["", "perceptlm COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    """The ``perceptlm`` console script."""
    from_argv = args is None
    args = sys.argv[1:] if args is None else list(args)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return
    if args[0] in TOOLS:
        importlib.import_module(TOOLS[args[0]][0]).main(args[1:])
        return
    if args[0] not in TRAINER_COMMANDS and not args[0].startswith("-"):
        raise SystemExit(f"perceptlm: unknown command {args[0]!r}; valid: {', '.join([*TRAINER_COMMANDS, *TOOLS])}"
                         " (perceptlm --help)")
    from perceptlm.cli.lightning import cli

    cli(None if from_argv else args)  # None: LightningCLI reads sys.argv itself


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'perceptlm.cli' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
