"""Generation-based evaluation shared by every mechanism: the validation/test/predict steps collect
records, which :mod:`perceptlm.evaluation` gathers, scores and writes.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from perceptlm.batch import Batch
from perceptlm.evaluation import keys as K
from perceptlm.evaluation.likelihood import option_loglikelihood_choice
from perceptlm.evaluation.records import config_hash, gather_records, results_summary, write_results
from perceptlm.evaluation.scoring import score_records
from perceptlm.generation import truncate_at_stop


def _as_batch(batch: dict[str, Any] | Batch) -> Batch:
    """A collated batch as a :class:`~perceptlm.batch.Batch` (collators still hand dicts)."""
    if isinstance(batch, Batch):
        return batch
    names = {f.name for f in dataclasses.fields(Batch)}
    return Batch(**{k: v for k, v in batch.items() if k in names})


class EvaluationMixin:
    """validation/test/predict steps for :class:`InterfaceModule`."""

    def _decode(self, ids: torch.Tensor) -> list[str]:
        ended = torch.isin(ids, torch.tensor(self.stop_token_ids, device=ids.device)).cumsum(1) > 0
        ids = ids.masked_fill(ended, self.tokenizer.pad_token_id)  # the end-of-turn token and after
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [truncate_at_stop(t, self.hparams.stop_strings).strip() for t in texts]

    def _eval_step(self, batch: dict[str, Any]) -> None:
        self._count_skipped(batch, "eval")
        self._task = batch["task"]
        if not batch["ids"]:
            return
        args = (batch["media"], batch["prompt_ids"], batch["prompt_mask"])
        where = {"media_position": batch.get("media_position")}
        predictions = self._decode(self.generate(*args, **where))
        blind = self._decode(self.generate(*args, blind=True, **where)) if self.hparams.eval_blind else None
        choices = blind_choices = None
        if "option_ids" in batch:  # multiple choice: also pick the most likely option
            choices = option_loglikelihood_choice(self, _as_batch(batch))
            if self.hparams.eval_blind:
                blind_choices = option_loglikelihood_choice(self, _as_batch(batch), blind=True)
        for i, sample_id in enumerate(batch["ids"]):
            record = {"id": sample_id, "media": batch["sources"][i],
                      "prompt": batch["prompts"][i], "prediction": predictions[i], "references": batch["references"][i]}
            if blind is not None:
                record["blind_prediction"] = blind[i]
            if "meta" in batch:
                record["meta"] = batch["meta"][i]
            if choices is not None:
                record[K.LIKELIHOOD_CHOICE] = choices[i]
            if blind_choices is not None:
                record[K.BLIND_LIKELIHOOD_CHOICE] = blind_choices[i]
            self._records.append(record)

    def _eval_start(self) -> None:
        self._seen["eval"] = [0, 0]
        self._records: list[dict[str, Any]] = []
        self._task = "vqa"
        self._eval_clock = time.perf_counter()

    def _eval_end(self, stage: str) -> dict[str, Any]:
        self._check_skipped("eval")
        records = gather_records(self._records)
        self._records = []
        metrics = score_records(self._task, records)
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, rank_zero_only=True, sync_dist=False)
        if self.trainer.is_global_zero:
            self._log_prediction_table(stage, records)
        return {"metrics": metrics, "records": records, "seconds": time.perf_counter() - self._eval_clock}

    def _log_prediction_table(self, stage: str, records: list[dict[str, Any]], rows: int = 32) -> None:
        """A W&B table of the first ``rows`` samples: media, prompt, prediction, references."""
        from lightning.pytorch.loggers import WandbLogger

        loggers = [logger for logger in self.loggers if isinstance(logger, WandbLogger)]
        if not loggers or not records:
            return
        import wandb

        strips: dict[str, Any] = {}  # video path -> a horizontal strip of frames, shown as an image

        def media(path: str | None) -> Any:
            suffix = Path(path).suffix.lower() if path else ""
            if suffix in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"):
                return wandb.Image(path)
            if suffix in (".mp4", ".avi", ".webm", ".mkv", ".mov"):
                from perceptlm.data.video import frame_strip

                try:
                    strips[path] = frame_strip(path)
                except Exception:  # noqa: BLE001 - an undecodable clip is shown by its path
                    return path
                return wandb.Image(strips[path])
            if suffix in (".wav", ".flac", ".mp3", ".ogg"):
                return wandb.Audio(path)
            return path

        columns = ["id", "media", "prompt", "prediction", "references"]
        shown = [(r, media(r.get("media"))) for r in records[:rows]]
        data = [[r["id"], m, r["prompt"], r["prediction"], " | ".join(r["references"])] for r, m in shown]
        images = [r for r, m in shown[:8] if isinstance(m, wandb.Image)]
        for logger in loggers:
            logger.log_table(f"{stage}/predictions", columns=columns, data=data, step=self.global_step)
            if images:  # also as captioned images, which every W&B version renders
                logger.log_image(f"{stage}/examples", images=[strips.get(r["media"], r["media"]) for r in images],
                                 step=self.global_step,
                                 caption=[f"{r['prompt'].strip()} -> {r['prediction']} (ref: {r['references'][0]})"
                                          for r in images])

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        result = self._eval_end("test")
        if self.trainer.is_global_zero:
            self.write_results(result)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        if not batch["ids"]:
            return []
        predictions = self._decode(self.generate(batch["media"], batch["prompt_ids"], batch["prompt_mask"],
                                                 media_position=batch.get("media_position")))
        return [{"id": i, "prompt": p, "prediction": y} for i, p, y in zip(batch["ids"], batch["prompts"], predictions)]

    def config_hash(self) -> str:
        """Short hash of what defines the run: model hyper-parameters and the data selection."""
        datamodule = self.trainer.datamodule
        data = {k: getattr(datamodule, k, None) for k in ("name", "data_root", "task", "template", "fraction",
                                                         "limit", "seed", "max_length")}
        return config_hash(dict(self.hparams), data)

    def write_results(self, result: dict[str, Any]) -> Path:
        """``results.json`` + ``predictions.jsonl`` in the run directory; prints a summary table."""
        trainer = self.trainer
        datamodule = trainer.datamodule
        summary = results_summary(
            result["metrics"], preset=self.preset.name, encoder=self.encoder_name, llm=self.llm_name,
            dataset=getattr(datamodule, "name", type(datamodule).__name__ if datamodule else None), task=self._task,
            fraction=getattr(datamodule, "fraction", None), seed=getattr(datamodule, "seed", None),
            batch_size=getattr(datamodule, "eval_batch_size", None), trainable_params=self.num_trainable_parameters,
            visual_tokens=self.num_visual_tokens, train_seconds=self.train_seconds, eval_seconds=result["seconds"],
            checkpoint=str(trainer.ckpt_path) if trainer.ckpt_path else None, config_hash=self.config_hash(),
            train_samples=self.train_samples)
        return write_results(trainer.default_root_dir, summary, result["records"])
