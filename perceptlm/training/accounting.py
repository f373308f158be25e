"""What a run counts besides its loss: trainable parameters per component, samples skipped for
unreadable media, training time and samples (for ``results.json``), and throughput."""

from __future__ import annotations

import time
from typing import Any

from perceptlm.batch import Batch
from perceptlm.evaluation import benchmark_label
from perceptlm.model import PerceptualLM


class SkipCounter:
    """Samples whose media failed to load, per stage and epoch; more than ``max_fraction`` of an
    epoch's samples is an error. The first few skipped samples are printed by id and reason."""

    def __init__(self, max_fraction: float, shown: int = 3) -> None:
        self.max_fraction, self.shown = max_fraction, shown
        self.seen: dict[str, list[int]] = {}  # stage -> [skipped, total]

    def start(self, stage: str) -> None:
        self.seen[stage] = [0, 0]

    def count(self, batch: Batch, stage: str) -> None:
        skipped, seen = batch.skipped, self.seen.get(stage, [0, 0])  # a resumed epoch skips on_*_epoch_start
        for sample_id, reason in skipped[: max(0, self.shown - seen[0])]:
            print(f"skipped {stage} sample {sample_id}: {reason}")
        self.seen[stage] = [seen[0] + len(skipped), seen[1] + len(skipped) + len(batch.ids)]

    def finish(self, stage: str) -> tuple[int, int]:
        """``(skipped, total)`` of the stage's epoch; raises when too many were skipped."""
        skipped, total = self.seen.pop(stage, [0, 0])
        if total and skipped / total > self.max_fraction:
            raise RuntimeError(
                f"{skipped} of {total} {stage} samples this epoch had media that failed to load, more "
                f"than max_skipped_fraction={self.max_fraction}; see the messages above"
            )
        return skipped, total


class TrainClock:
    """Wall time spent training (paused across validation, checkpoints and resumes) and samples
    trained on, over all ranks; and the time between consecutive steps, for throughput."""

    def __init__(self) -> None:
        self.seconds, self.samples = 0.0, 0
        self._since: float | None = None
        self._last_step: float | None = None

    def start(self) -> None:
        self._since, self._last_step = time.perf_counter(), None

    def stop(self) -> None:
        if self._since is not None:
            now = time.perf_counter()
            self.seconds += now - self._since
            self._since = now

    def step(self) -> float | None:
        """Seconds since the previous step (None at the first)."""
        now = time.perf_counter()
        previous, self._last_step = self._last_step, now
        return None if previous is None else now - previous


def throughput(batch: Batch, seconds: float, world_size: int, input_tokens: int) -> dict[str, float]:
    """``samples_per_second`` and ``tokens_per_second`` (the model's input tokens plus the real text
    tokens through the LLM) of one step, this rank's batch times the world size."""
    size = batch.input_ids.shape[0]
    tokens = float(batch.attention_mask.sum()) + input_tokens * size
    return {"samples_per_second": size * world_size / seconds, "tokens_per_second": tokens * world_size / seconds}


def experiment_fields(model: PerceptualLM, datamodule: Any) -> dict[str, Any]:
    """What a run is, as flat fields a dashboard filters and groups by: ``mechanism`` (the preset),
    ``dataset``, ``task``, ``fraction``, ``seed``, ``encoder``, ``llm``, ``trainable_params``,
    ``visual_tokens``, ``benchmark`` ("dataset task[ fraction]") and ``cell`` ("benchmark | mechanism":
    the seeds of one table cell share it)."""
    dataset = getattr(datamodule, "name", type(datamodule).__name__ if datamodule is not None else None)
    task, fraction = getattr(datamodule, "task", None), getattr(datamodule, "fraction", None)
    benchmark = benchmark_label(dataset, task, fraction)
    return {"mechanism": model.preset.name, "dataset": dataset, "task": task, "fraction": fraction,
            "seed": getattr(datamodule, "seed", None), "encoder": model.encoder.name, "llm": model.llm.name,
            "trainable_params": model.num_trainable_parameters, "visual_tokens": model.num_visual_tokens,
            "benchmark": benchmark, "cell": f"{benchmark} | {model.preset.name}"}


def report_parameters(model: PerceptualLM, loggers: list[Any], print_table: bool) -> None:
    """The (component, trainable, frozen) parameter table, printed (on rank 0) and logged as a table."""
    rows = model.parameter_table()
    if print_table:
        lines = [f"{'component':<12}{'trainable':>14}{'frozen':>14}"]
        print("\n".join(lines + [f"{name:<12}{t:>14,}{f:>14,}" for name, t, f in rows]))
    for logger in loggers:
        if hasattr(logger, "log_table"):
            logger.log_table("parameters", columns=["component", "trainable", "frozen"], data=[list(r) for r in rows])
