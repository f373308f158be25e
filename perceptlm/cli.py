"""``perceptlm fit|validate|test|predict``: one LightningCLI for every mechanism and dataset.

Model and data are in subclass mode; configs compose in order
(``--config mechanism.yaml --config data.yaml --config trainer.yaml``). The datamodule receives the
model's tokenizer and media preprocessing after instantiation (not repeated in configs).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from perceptlm.modules.interface import InterfaceModule

# Frozen backbones stay in eval mode during fit by design (see InterfaceModule.train).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


class PerceptLMCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({
            "trainer.logger": {
                "class_path": "perceptlm.loggers.AutoWandbLogger",
                "init_args": {"project": "perceptlm", "save_dir": "runs"},
            },
        })

    def before_instantiate_classes(self) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        datamodule, model = self.datamodule, self.model
        if datamodule is not None and hasattr(datamodule, "connect"):
            datamodule.connect(model.tokenizer, model.encoder.preprocess, model.encoder.stack_media)


def cli(args: list[str] | None = None, run: bool = True) -> PerceptLMCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line."""
    return PerceptLMCLI(
        InterfaceModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """The ``perceptlm`` console script."""
    cli(args)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
