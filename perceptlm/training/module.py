"""``InterfaceModule``: the LightningModule that trains and evaluates one :class:`PerceptualLM`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from perceptlm.batch import Batch
from perceptlm.encoders.base import PerceptualEncoder
from perceptlm.evaluation import baseline_gaps
from perceptlm.llm.language_model import LanguageModel
from perceptlm.model import PerceptualLM
from perceptlm.training import optimization, persistence
from perceptlm.training.accounting import SkipCounter, TrainClock, experiment_fields, report_parameters, throughput
from perceptlm.training.evaluation import Evaluator, log_predictions, write_test_results

# The constructor arguments that define the model (PerceptualLM.build); the rest are run options.
MODEL_ARGUMENTS = ("preset", "encoder", "llm", "stage", "features", "connector", "injection", "injection_options",
                   "prompt_tokens", "llm_tuning", "llm_tuning_options", "freeze_connector", "label_smoothing",
                   "itc_weight", "max_new_tokens", "num_beams", "stop_strings", "compile_llm", "special_tokens",
                   "llm_dropout", "llm_activation_checkpointing", "llm_dtype")


class InterfaceModule(LightningModule):
    """Trains and evaluates the :class:`~perceptlm.model.PerceptualLM` of ``preset`` (in ``.model``).

    Model: ``preset`` (:func:`perceptlm.presets.names`), ``encoder`` and ``llm`` (zoo names or loaded
    modules), the preset overrides ``features``, ``connector``, ``injection``, ``injection_options``,
    ``prompt_tokens``, ``llm_tuning`` (frozen | lora | norms | full) with ``llm_tuning_options``;
    ``stage`` ("align" | "instruct") applies the preset's two-stage recipe (``llm_tuning`` and
    ``freeze_connector`` override it) and ``init_from`` (a checkpoint or ``save_pretrained`` folder)
    copies an earlier stage's trainable weights; decoding ``max_new_tokens``, ``num_beams``,
    ``stop_strings``; ``compile_llm``; ``itc_weight`` (BLIP-2's contrastive loss); ``special_tokens``,
    ``llm_dropout``, ``llm_activation_checkpointing``, ``llm_dtype`` (the frozen LLM's weights: ``auto``,
    ``float32``, ``bfloat16``, ``float16``). See :class:`PerceptualLM`. Optimisation follows DePALM: AdamW (``lr`` 8e-4,
    ``weight_decay`` 0.1 on matrices, or on every trainable tensor with ``decay_all_parameters`` as
    DePALM's released optimiser; ``adam_eps`` 1e-4), linear warm-up over ``warmup_fraction`` of the
    steps from ``lr * min_lr_ratio``, then cosine decay to ``lr * min_lr_ratio``; label smoothing
    0.002. ``llm_lr`` is the learning rate
    of tuned LLM weights (default ``lr``, or the stage recipe's: LLaVA's stage 2 tunes the LLM at 2e-5).
    Faults: a NaN/inf loss stops the run (``nonfinite_loss="stop"``) or skips the step (``"skip"``);
    samples whose media fail to load are skipped and counted, and more than ``max_skipped_fraction``
    of an epoch is an error. ``eval_blind`` also evaluates the blind baseline (perception zeroed),
    ``eval_mismatched`` the mismatched-media baseline (each sample with another sample's media:
    :func:`~perceptlm.training.evaluation.mismatched_partners`).
    """

    def __init__(
        self, preset: str = "depalm-qp-l0", encoder: str | PerceptualEncoder = "test-tiny-vit",
        llm: str | LanguageModel = "test-tiny-llama", features: dict[str, Any] | None = None,
        connector: dict[str, Any] | None = None, injection: str | None = None,
        injection_options: dict[str, Any] | None = None, prompt_tokens: int | None = None,
        llm_tuning: str | None = None, llm_tuning_options: dict[str, Any] | None = None, lr: float = 8e-4,
        llm_lr: float | None = None, weight_decay: float = 0.1, adam_eps: float = 1e-4, warmup_fraction: float = 0.2,
        min_lr_ratio: float = 1e-4, label_smoothing: float = 0.002, max_new_tokens: int = 20, num_beams: int = 1,
        stop_strings: list[str] | None = None, eval_blind: bool = False, nonfinite_loss: str = "stop",
        max_skipped_fraction: float = 0.01, stage: str | None = None, init_from: str | None = None,
        freeze_connector: bool | None = None, compile_llm: bool = False, itc_weight: float = 0.0,
        special_tokens: list[str] | None = None, llm_dropout: bool = False, decay_all_parameters: bool = False,
        eval_mismatched: bool = False, llm_activation_checkpointing: bool = False, llm_dtype: str = "auto",
    ) -> None:
        super().__init__()
        if nonfinite_loss not in ("stop", "skip"):
            raise ValueError(f"nonfinite_loss={nonfinite_loss!r} is unknown; valid: 'stop', 'skip'")
        loaded = not (isinstance(encoder, str) and isinstance(llm, str))
        self.save_hyperparameters(ignore=["encoder", "llm"] if loaded else [])
        arguments = locals()
        self.model = PerceptualLM.build(**{k: arguments[k] for k in MODEL_ARGUMENTS})
        self.llm_lr = llm_lr if llm_lr is not None else self.model.preset.stage(stage).get("llm_lr")
        if init_from:
            state = persistence.read_trainable_state(init_from)
            copied = self.model.load_trainable(state, f"init_from={init_from!r}", partial=True)
            print(f"{len(copied)} tensors initialised from {init_from}")
        self.strict_loading = False  # checkpoints hold trainable weights only; checked in on_load_checkpoint
        self.skips, self.clock = SkipCounter(max_skipped_fraction), TrainClock()
        self.evaluator = Evaluator(self.model, blind=eval_blind, mismatched=eval_mismatched)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def forward(self, media: Any, input_ids: Tensor, attention_mask: Tensor, **options: Any) -> Tensor:
        """Logits over the text positions: :meth:`PerceptualLM.forward`."""
        return self.model(media, input_ids, attention_mask, **options)

    def generate(self, media: Any, input_ids: Tensor, attention_mask: Tensor, **options: Any) -> Tensor:
        """New token ids after left-padded prompts: :meth:`PerceptualLM.generate`."""
        return self.model.generate(media, input_ids, attention_mask, **options)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "connect"):
            datamodule.connect(self.model)

    # -- training ----------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self.skips.start("train")

    def on_train_epoch_end(self) -> None:
        self._finish_skips("train")

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        self.skips.count(batch, "train")
        if not batch.ids:
            return None  # every sample of this batch was skipped
        losses, size = self.model.losses(batch), len(batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            message = f"non-finite training loss ({loss.item()}) at step {self.global_step}, batch {batch.ids[:4]}"
            if self.hparams.nonfinite_loss == "stop":
                raise FloatingPointError(message + "; set nonfinite_loss='skip' to skip such steps")
            print(f"{message}: step skipped")
            self.log("train/nonfinite_steps", 1.0, reduce_fx="sum", on_step=False, on_epoch=True, batch_size=size)
            return None  # Lightning skips the optimizer step
        self.clock.samples += size * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if "itc" in losses:
            self.log("train/itc", losses["itc"], batch_size=size)
        if (seconds := self.clock.step()) is not None:
            rates = throughput(batch, seconds, self.trainer.world_size, self.model.num_input_tokens)
            rates["lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.log_dict({f"train/{k}": v for k, v in rates.items()}, batch_size=size)
        return loss

    def configure_optimizers(self) -> Any:
        h = self.hparams
        optimizer = optimization.adamw(self.model, h.lr, h.weight_decay, h.adam_eps, self.llm_lr,
                                       decay_all=h.decay_all_parameters)
        # The schedule spans max_steps when it is set, so a run stopped early by max_epochs (or a
        # pre-emption) and resumed follows the same learning-rate curve as an uninterrupted one.
        steps = self.trainer.max_steps
        total = steps if steps and steps > 0 else self.trainer.estimated_stepping_batches
        return {"optimizer": optimizer,
                "lr_scheduler": optimization.schedule(optimizer, total, h.warmup_fraction, h.min_lr_ratio)}

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        optimization.clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_fit_start(self) -> None:
        self._log_experiment()
        report_parameters(self.model, self.loggers, self.trainer.is_global_zero)

    def _log_experiment(self) -> None:
        """The run's :func:`~perceptlm.training.accounting.experiment_fields` as hyper-parameters."""
        fields = experiment_fields(self.model, getattr(self.trainer, "datamodule", None))
        for logger in self.loggers:
            logger.log_hyperparams(fields)

    def on_test_start(self) -> None:
        self._log_experiment()

    on_predict_start = on_test_start

    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":  # a fit logged them at its start
            self._log_experiment()

    def on_train_start(self) -> None:
        self.clock.start()

    def on_train_end(self) -> None:
        self.clock.stop()

    # -- evaluation --------------------------------------------------------------------------------
    def _start_eval(self) -> None:
        self.skips.start("eval")
        self.evaluator.start()

    def _eval_step(self, batch: Batch) -> None:
        self.skips.count(batch, "eval")
        self.evaluator.step(batch)

    def _finish_eval(self, stage: str) -> dict[str, Any]:
        self._finish_skips("eval")
        result = self.evaluator.finish()
        metrics = {**result["metrics"], **baseline_gaps(result["metrics"])}
        if stage == "test":
            metrics["train_seconds"] = self.clock.seconds  # with the score: DePALM's score-against-time plot
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, rank_zero_only=True, sync_dist=False)
        if self.trainer.is_global_zero:
            log_predictions(self.loggers, stage, result["records"], self.global_step)
        return result

    def _finish_skips(self, stage: str) -> None:
        skipped, total = self.skips.finish(stage)
        if total:
            self.log(f"data/{stage}_skipped", float(skipped), reduce_fx="sum", sync_dist=True)

    on_validation_epoch_start = on_test_epoch_start = _start_eval

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        result = self._finish_eval("test")
        if self.trainer.is_global_zero:
            write_test_results(self, result, self.evaluator.task)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        if not batch.ids:
            return []
        predictions = self.evaluator.predict(batch)
        return [{"id": i, "prompt": p, "prediction": y} for i, p, y in zip(batch.ids, batch.prompts, predictions)]

    # -- persistence -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        persistence.save_checkpoint(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        persistence.load_checkpoint(self, checkpoint)

    def save_pretrained(self, directory: str | Path) -> Path:
        """The model's trainable weights (safetensors) and every constructor argument (JSON)."""
        arguments = {k: v for k, v in dict(self.hparams).items() if k not in ("encoder", "llm")}
        return self.model.save_pretrained(directory, arguments, {"class": type(self).__name__,
                                          "train_seconds": self.clock.seconds, "train_samples": self.clock.samples})

    @classmethod
    def from_pretrained(cls, directory: str | Path, encoder: Any = None, llm: Any = None,
                        **overrides: Any) -> "InterfaceModule":
        """Rebuild a module written by :meth:`save_pretrained` (backbones from the zoo or passed in)."""
        return persistence.from_pretrained(cls, directory, encoder, llm, **overrides)


def build(preset: str, encoder: str | PerceptualEncoder, llm: str | LanguageModel, **overrides: Any) -> InterfaceModule:
    """The :class:`InterfaceModule` of ``preset`` (:func:`perceptlm.presets.names`) on ``encoder`` and
    ``llm`` (zoo names or loaded modules); ``overrides`` are preset fields (dicts merge) or module
    arguments."""
    return InterfaceModule(preset=preset, encoder=encoder, llm=llm, **overrides)
