"""``perceptlm fit|validate|test|predict``: one LightningCLI for every mechanism and dataset.

Model and data are in subclass mode; configs compose in order
(``--config mechanism.yaml --config data.yaml --config trainer.yaml``). The datamodule receives the
model's tokenizer and media preprocessing when the run starts (``datamodule.connect(model)`` in the
model's ``setup``; not repeated in configs).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from perceptlm.training import InterfaceModule
from perceptlm.training.callbacks import PreemptionCheckpoint
from perceptlm.training.cpu import check_threads, cpu_precision
from perceptlm.training.loggers import continue_checkpoint_run

# Frozen backbones stay in eval mode during fit by design (see PerceptualLM.train).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


# What a run chooses for itself even when the model is rebuilt from a checkpoint's hyper-parameters
RUN_OPTIONS = ("eval_blind", "eval_mismatched", "max_new_tokens", "num_beams", "stop_strings", "compile_llm", "nonfinite_loss",
               "max_skipped_fraction")


class LoggedConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` in the run directory and logs the whole resolved configuration (model,
    data, trainer, seed) to every logger, so a W&B run can be filtered by dataset, fraction or seed."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        config = self.config.as_dict()
        config.pop("config", None)  # the --config file paths; their contents are already merged
        for logger in trainer.loggers:
            logger.log_hyperparams({"cli": config})


class PerceptLMCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({
            "trainer.logger": {
                "class_path": "perceptlm.training.loggers.AutoWandbLogger",
                "init_args": {"project": "perceptlm", "save_dir": "runs"},
            },
            # checkpoints are written to a temporary file and renamed: a kill mid-write keeps the previous one
            "trainer.plugins": {"class_path": "perceptlm.training.checkpointing.AtomicCheckpointIO"},
        })
        # SIGTERM during fit: last.ckpt at the end of the step, exit code 75 (resume with --ckpt_path last)
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``, Lightning rebuilds the model from the checkpoint's hyper-parameters,
        over whatever the command gave. The model's structure should come from there; the run's own
        evaluation and runtime options (:data:`RUN_OPTIONS`) are kept from the command, and
        ``init_from`` is dropped (the checkpoint holds the weights it would copy)."""
        subcommand = self.config.get("subcommand")
        if not subcommand or not self.config[subcommand].get("ckpt_path"):
            return super()._parse_ckpt_path()  # nothing is rebuilt: the command's model stands, init_from too
        given = self.config[subcommand].get("model")
        keep = {k: given.init_args[k] for k in RUN_OPTIONS
                if given is not None and "init_args" in given and k in given.init_args}
        super()._parse_ckpt_path()
        model = self.config[subcommand].get("model")
        if model is not None and "init_args" in model:
            for key, value in keep.items():
                model.init_args[key] = value
            if "init_from" in model.init_args:
                model.init_args["init_from"] = None

    def before_instantiate_classes(self) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        check_threads()
        subcommand = self.config.get("subcommand")
        trainer = self.config[subcommand].get("trainer") if subcommand else self.config.get("trainer")
        if trainer is not None and (trainer.get("accelerator") == "cpu" or (
                trainer.get("accelerator") in ("auto", None) and not torch.cuda.is_available())):
            trainer["precision"] = cpu_precision(trainer.get("precision"))  # no emulated bfloat16

    def _continue_logged_run(self) -> None:
        """A command on a checkpoint logs into the W&B run that wrote it (one run per experiment)."""
        continue_checkpoint_run(self.trainer, self.config_init[self.subcommand].get("ckpt_path"))

    before_fit = before_validate = before_test = before_predict = _continue_logged_run


def cli(args: list[str] | None = None, run: bool = True) -> PerceptLMCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line."""
    return PerceptLMCLI(
        InterfaceModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LoggedConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
