"""Generation-based evaluation inside a Lightning run, the same for every mechanism.

Each rank collects ``(id, prompt, prediction, references)`` records; at the end of the epoch the
records are gathered, de-duplicated by id (distributed samplers pad), and scored once by
:mod:`perceptlm.evaluation`, so the metric equals the single-process value whatever the number of
ranks or the batch size. The test epoch writes ``results.json`` and ``predictions.jsonl``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from perceptlm.batch import Batch
from perceptlm.data.video import frame_strip
from perceptlm.encoders.base import PerceptualFeatures
from perceptlm.evaluation import keys as K
from perceptlm.evaluation import (config_hash, gather_records, option_loglikelihood_choice, results_summary,
                                  score_records, write_results)
from perceptlm.model import PerceptualLM

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


def mismatched_partners(sources: Sequence[Any]) -> list[int | None]:
    """For each sample of an evaluation batch, the sample whose media it is paired with in the
    mismatched-media baseline: the next one in the batch, cyclically, with different media
    (``sources``: each sample's media path or id). None when every sample of the batch has the same
    media. A fixed permutation for a fixed evaluation order and batch size; it keeps the prompt, the
    format and the media statistics and breaks only the media-question correspondence."""
    size = len(sources)
    partners: list[int | None] = []
    for i in range(size):
        partners.append(next((j % size for j in range(i + 1, i + size) if sources[j % size] != sources[i]), None))
    return partners


def take_media(media: Any, index: torch.Tensor) -> Any:
    """The rows ``index`` of stacked media: a tensor, a dict of tensors (audio front-ends) or cached
    :class:`PerceptualFeatures`."""
    if isinstance(media, PerceptualFeatures):
        return PerceptualFeatures(media.tokens[index], media.mask[index], media.cls_index, media.grid)
    if isinstance(media, dict):
        return {key: take_media(value, index) for key, value in media.items()}
    return media[index.to(media.device)]


class Evaluator:
    """Records of one evaluation epoch: predictions (and, with ``blind``, the blind baseline's; with
    ``mismatched``, the mismatched-media baseline's, see :func:`mismatched_partners`), multiple
    choice by option likelihood where the batch has options."""

    def __init__(self, model: PerceptualLM, blind: bool, mismatched: bool = False) -> None:
        self.model, self.blind, self.mismatched = model, blind, mismatched
        self.start()

    def start(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.task = "vqa"
        self.clock = time.perf_counter()

    def predict(self, batch: Batch, blind: bool = False) -> list[str]:
        ids = self.model.generate(batch.media, batch.prompt_ids, batch.prompt_mask, blind=blind,
                                  media_position=batch.media_position)
        return self.model.decode(ids)

    def predict_mismatched(self, batch: Batch) -> list[tuple[str | None, Any]]:
        """(prediction, the partner's media source) per sample, with each sample's media replaced by
        its partner's; (None, None) for a sample without a partner."""
        sources = [source if source is not None else sample_id for source, sample_id in zip(batch.sources, batch.ids)]
        partners = mismatched_partners(sources)
        index = torch.tensor([i if p is None else p for i, p in enumerate(partners)])
        ids = self.model.generate(take_media(batch.media, index), batch.prompt_ids, batch.prompt_mask,
                                  media_position=batch.media_position)
        texts = self.model.decode(ids)
        return [(None, None) if p is None else (texts[i], batch.sources[p]) for i, p in enumerate(partners)]

    def step(self, batch: Batch) -> None:
        self.task = batch.task
        if not batch.ids:
            return
        predictions = self.predict(batch)
        blind = self.predict(batch, blind=True) if self.blind else None
        mismatched = self.predict_mismatched(batch) if self.mismatched else None
        choices = blind_choices = None
        if batch.option_ids is not None:  # multiple choice: also pick the most likely option
            choices = option_loglikelihood_choice(self.model, batch)
            if self.blind:
                blind_choices = option_loglikelihood_choice(self.model, batch, blind=True)
        for i, sample_id in enumerate(batch.ids):
            record = {"id": sample_id, "media": batch.sources[i], "prompt": batch.prompts[i],
                      "prediction": predictions[i], "references": batch.references[i]}
            if blind is not None:
                record["blind_prediction"] = blind[i]
            if mismatched is not None:
                record["mismatched_prediction"], record["mismatched_media"] = mismatched[i]
            if batch.meta is not None:
                record["meta"] = batch.meta[i]
            if choices is not None:
                record[K.LIKELIHOOD_CHOICE] = choices[i]
            if blind_choices is not None:
                record[K.BLIND_LIKELIHOOD_CHOICE] = blind_choices[i]
            self.records.append(record)

    def finish(self) -> dict[str, Any]:
        """``{"metrics", "records", "seconds"}`` over every rank's records, each sample once."""
        records = gather_records(self.records)
        self.records = []
        metrics = score_records(self.task, records)
        return {"metrics": metrics, "records": records, "seconds": time.perf_counter() - self.clock}


def log_predictions(loggers: list[Any], stage: str, records: list[dict[str, Any]], step: int, rows: int = 32) -> None:
    """A W&B table of the first ``rows`` samples (media, prompt, prediction, references) and the first
    few as captioned images, on every W&B logger."""
    from lightning.pytorch.loggers import WandbLogger

    loggers = [logger for logger in loggers if isinstance(logger, WandbLogger)]
    if not loggers or not records:
        return
    import wandb

    strips: dict[str, Any] = {}  # video path -> a horizontal strip of frames, shown as an image

    def media(path: str | None) -> Any:
        suffix = Path(path).suffix.lower() if path else ""
        if suffix in IMAGE_SUFFIXES:
            return wandb.Image(path)
        if suffix in VIDEO_SUFFIXES:
            try:
                strips[path] = frame_strip(path)
            except Exception:  # noqa: BLE001 - an undecodable clip is shown by its path
                return path
            return wandb.Image(strips[path])
        if suffix in AUDIO_SUFFIXES:
            return wandb.Audio(path)
        return path

    columns = ["id", "media", "prompt", "prediction", "references"]
    shown = [(r, media(r.get("media"))) for r in records[:rows]]
    data = [[r["id"], m, r["prompt"], r["prediction"], " | ".join(r["references"])] for r, m in shown]
    images = [r for r, m in shown[:8] if isinstance(m, wandb.Image)]
    for logger in loggers:
        logger.log_table(f"{stage}/predictions", columns=columns, data=data, step=step)
        if images:  # also as captioned images, which every W&B version renders
            logger.log_image(f"{stage}/examples", images=[strips.get(r["media"], r["media"]) for r in images], step=step,
                             caption=[f"{r['prompt'].strip()} -> {r['prediction']} (ref: {r['references'][0]})"
                                      for r in images])


DATA_FIELDS = ("name", "data_root", "task", "template", "fraction", "limit", "seed", "max_length")


def write_test_results(module: Any, result: dict[str, Any], task: str) -> Path:
    """``results.json`` + ``predictions.jsonl`` of a test epoch in the run directory."""
    trainer, model, clock = module.trainer, module.model, module.clock
    datamodule = trainer.datamodule
    summary = results_summary(
        result["metrics"], preset=model.preset.name, encoder=model.encoder.name, llm=model.llm.name,
        dataset=getattr(datamodule, "name", type(datamodule).__name__ if datamodule else None), task=task,
        fraction=getattr(datamodule, "fraction", None), seed=getattr(datamodule, "seed", None),
        batch_size=getattr(datamodule, "eval_batch_size", None), trainable_params=model.num_trainable_parameters,
        visual_tokens=model.num_visual_tokens, train_seconds=clock.seconds, eval_seconds=result["seconds"],
        checkpoint=str(trainer.ckpt_path) if trainer.ckpt_path else None,
        config_hash=config_hash(dict(module.hparams), {k: getattr(datamodule, k, None) for k in DATA_FIELDS}),
        train_samples=clock.samples,
    )
    return write_results(Path(trainer.default_root_dir), summary, result["records"])
