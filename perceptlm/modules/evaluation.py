"""Generation-based evaluation shared by every mechanism: predictions, metrics, result files.

Each rank collects ``(id, prompt, prediction, references)`` records; at the end of the epoch the
records are gathered, de-duplicated by id (distributed samplers pad), and scored once, so the metric
equals the single-process value whatever the number of ranks or the batch size.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from perceptlm.batch import Batch
from perceptlm.generation import truncate_at_stop



def gather_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' records, each id once, sorted by id."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[list[dict[str, Any]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, records)
        records = [r for part in gathered for r in (part or [])]
    unique = {str(r["id"]): r for r in records}
    return [unique[k] for k in sorted(unique, key=_natural)]


def _natural(key: str) -> tuple[int, Any]:
    return (0, int(key)) if key.isdigit() else (1, key)


def score(task: str, predictions: list[str], references: list[list[str]],
          meta: list[dict[str, Any] | None] | None = None) -> dict[str, float]:
    """The task's metrics on coco-caption / official-VQA scales (VQA accuracy in [0, 1]); the
    instruction tasks (mcq, yesno, conversation, llava_bench, instruct) and captions with per-sample
    ``meta`` are scored by :func:`perceptlm.eval.scoring.score_instruction`."""
    from perceptlm.eval.scoring import TASKS as INSTRUCTION_TASKS, score_instruction
    from perceptlm.metrics import functional as M

    if not predictions:
        return {}
    if task in INSTRUCTION_TASKS or (task == "caption" and meta and any(meta)):
        return score_instruction(task, predictions, references, meta)
    if task == "vqa":
        if all(len(r) == 1 for r in references):
            # One ground-truth answer per question (easy-VQA, GQA-style): the VQA leave-one-out
            # formula needs several annotators, so score normalised exact match instead.
            hits = [M.vqa_normalize_answer(p) == M.vqa_normalize_answer(r[0]) for p, r in zip(predictions, references)]
            return {"accuracy": sum(hits) / len(hits)}
        return {"accuracy": float(M.vqa_accuracy(predictions, references))}
    if task == "caption":
        bleu = M.bleu(predictions, references)
        return {"cider": float(M.cider(predictions, references)), "bleu4": float(bleu[3]),
                "rouge_l": float(M.rouge_l(predictions, references))}
    raise ValueError(f"no metrics for task {task!r}; valid tasks: 'vqa', 'caption', {', '.join(map(repr, INSTRUCTION_TASKS))}")


class EvaluationMixin:
    """validation/test/predict steps for :class:`InterfaceModule`."""

    def _decode(self, ids: torch.Tensor) -> list[str]:
        ended = torch.isin(ids, torch.tensor(self.stop_token_ids, device=ids.device)).cumsum(1) > 0
        ids = ids.masked_fill(ended, self.tokenizer.pad_token_id)  # the end-of-turn token and after
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [truncate_at_stop(t, self.hparams.stop_strings).strip() for t in texts]

    def _eval_step(self, batch: Batch) -> None:
        self._count_skipped(batch, "eval")
        self._task = batch.task
        if not batch.ids:
            return
        args = (batch.media, batch.prompt_ids, batch.prompt_mask)
        where = {"media_position": batch.media_position}
        predictions = self._decode(self.generate(*args, **where))
        blind = self._decode(self.generate(*args, blind=True, **where)) if self.hparams.eval_blind else None
        choices = blind_choices = None
        if batch.option_ids is not None:  # multiple choice: also pick the most likely option
            from perceptlm.eval.likelihood import option_loglikelihood_choice

            choices = option_loglikelihood_choice(self, batch)
            if self.hparams.eval_blind:
                blind_choices = option_loglikelihood_choice(self, batch, blind=True)
        for i, sample_id in enumerate(batch.ids):
            record = {"id": sample_id, "media": batch.sources[i],
                      "prompt": batch.prompts[i], "prediction": predictions[i], "references": batch.references[i]}
            if blind is not None:
                record["blind_prediction"] = blind[i]
            if batch.meta is not None:
                record["meta"] = batch.meta[i]
            if choices is not None:
                record["likelihood_choice"] = choices[i]
            if blind_choices is not None:
                record["blind_likelihood_choice"] = blind_choices[i]
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
        refs = [r["references"] for r in records]
        meta = [r.get("meta") for r in records] if any("meta" in r for r in records) else None
        metrics = score(self._task, [r["prediction"] for r in records], refs, meta)
        if records and "blind_prediction" in records[0]:
            blind = score(self._task, [r["blind_prediction"] for r in records], refs, meta)
            metrics.update({f"blind_{k}": v for k, v in blind.items()})
        from perceptlm.eval.scoring import likelihood_accuracy

        if (accuracy := likelihood_accuracy(records)) is not None:  # multiple choice by option likelihood
            metrics["accuracy_likelihood"] = accuracy
        if (accuracy := likelihood_accuracy(records, "blind_likelihood_choice")) is not None:
            metrics["blind_accuracy_likelihood"] = accuracy
        metrics["num_samples"] = float(len(records))
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

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        result = self._eval_end("test")
        if self.trainer.is_global_zero:
            self.write_results(result)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        if not batch.ids:
            return []
        predictions = self._decode(self.generate(batch.media, batch.prompt_ids, batch.prompt_mask,
                                                 media_position=batch.media_position))
        return [{"id": i, "prompt": p, "prediction": y} for i, p, y in zip(batch.ids, batch.prompts, predictions)]

    def config_hash(self) -> str:
        """Short hash of what defines the run: model hyper-parameters and the data selection."""
        datamodule = self.trainer.datamodule
        data = {k: getattr(datamodule, k, None) for k in ("name", "data_root", "task", "template", "fraction",
                                                         "limit", "seed", "max_length")}
        blob = json.dumps({"model": dict(self.hparams), "data": data}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def write_results(self, result: dict[str, Any]) -> Path:
        """``results.json`` + ``predictions.jsonl`` in the run directory; prints a summary table."""
        trainer = self.trainer
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        datamodule = trainer.datamodule
        metrics = result["metrics"]
        summary: dict[str, Any] = {
            **{k: v for k, v in metrics.items() if k != "num_samples"},
            "num_eval_samples": int(metrics["num_samples"]),
            "preset": self.preset.name,
            "encoder": self.encoder_name,
            "llm": self.llm_name,
            "dataset": getattr(datamodule, "name", type(datamodule).__name__ if datamodule else None),
            "task": self._task,
            "fraction": getattr(datamodule, "fraction", None),
            "seed": getattr(datamodule, "seed", None),
            "batch_size": getattr(datamodule, "eval_batch_size", None),
            "trainable_params": self.num_trainable_parameters,
            "visual_tokens": self.num_visual_tokens,
            "train_seconds": round(self.train_seconds, 2),
            "eval_seconds": round(result["seconds"], 2),
            "eval_samples_per_second": round(metrics["num_samples"] / max(result["seconds"], 1e-9), 2),
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "config_hash": self.config_hash(),
        }
        if self._task == "vqa":
            summary["num_eval_questions"] = summary["num_eval_samples"]
        if self.train_samples and self.train_seconds:
            summary["train_samples"] = self.train_samples
            summary["train_samples_per_second"] = round(self.train_samples / self.train_seconds, 2)
        (run_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        with open(run_dir / "predictions.jsonl", "w") as handle:
            for record in result["records"]:
                handle.write(json.dumps(record) + "\n")
        width = max(len(k) for k in summary)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in summary.items()))
        print(f"results: {run_dir / 'results.json'}  predictions: {run_dir / 'predictions.jsonl'}")
        return run_dir / "results.json"
