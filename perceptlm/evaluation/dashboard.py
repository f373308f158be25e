"""The W&B comparison workspace of a study: the runs of one W&B ``group`` (a grid: the DePALM
table, the instruction study, a user's sweep), laid out as the study reads.

Every run logs the fields :func:`perceptlm.training.accounting.experiment_fields` names as its
config (``mechanism``, ``benchmark``, ``cell`` = "benchmark | mechanism", ``seed``, ...) and, at
test, ``test/<metric>``, its baselines' gaps ``test/<metric>_gap_mismatched`` /
``test/<metric>_gap_blind``, ``test/train_seconds`` and the ``test/predictions`` table. The
workspace filters the project to the group, groups runs by ``cell`` (the seeds of one table cell)
and shows, per headline metric present: the score of each cell (mean, spread over seeds), the gap
over each baseline, the score against training time (DePALM's plot); then the training curves and
the predictions. Built with ``wandb-workspaces``; :func:`spec` is its JSON, which needs no account.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from perceptlm.evaluation import keys as K

GROUP_BY = "cell"  # the config field whose runs are one table cell (its seeds)
BASELINES = ("mismatched", "blind")
TRAINING_CURVES = ("train/loss", "train/lr", "train/samples_per_second")


def metrics_of_records(records: list[dict[str, Any]]) -> list[str]:
    """The headline metrics (:data:`perceptlm.evaluation.keys.HEADLINE`) that ``results.json``
    records hold, in that order."""
    return [m for m in K.HEADLINE if any(record.get(m) is not None for record in records)]


def metrics_of_summaries(summaries: list[dict[str, Any]]) -> list[str]:
    """The headline metrics that W&B run summaries hold (as ``test/<metric>``)."""
    return [m for m in K.HEADLINE if any(f"test/{m}" in summary for summary in summaries)]


def baselines_of(records: list[dict[str, Any]], metric: str) -> list[str]:
    """The baselines (mismatched, blind) scored beside ``metric`` in any record."""
    return [b for b in BASELINES if any(record.get(f"{b}_{metric}") is not None for record in records)]


def workspace(group: str, entity: str, project: str, metrics: list[str],
              baselines: dict[str, list[str]] | None = None, name: str | None = None) -> Any:
    """The comparison workspace of ``group`` in ``entity/project`` for the headline ``metrics``;
    ``baselines``: metric -> the baselines it has (default: both)."""
    if not metrics:
        raise ValueError(f"group {group!r}: no headline metric ({', '.join(K.HEADLINE)}) to compare; "
                         "has any run of it been tested?")
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    def bars(title: str, key: str) -> Any:
        return wr.BarPlot(title=title, metrics=[wr.SummaryMetric(key)], groupby=wr.Config(GROUP_BY),
                          groupby_aggfunc="mean", groupby_rangefunc="stddev", orientation="h")

    about = wr.MarkdownPanel(markdown=(
        f"**{group}**: one bar per table cell (`{GROUP_BY}` = benchmark | mechanism), the mean over its "
        "seeds with their standard deviation. Gaps are the score minus the same model's score with "
        "another sample's media (mismatched) or with the media zeroed (blind). Training time is the "
        "fit's wall time (`test/train_seconds`)."))
    baselines = baselines or {}
    sections = [
        ws.Section(name="Scores per cell", is_open=True,
                   panels=[about, *[bars(f"{m} (mean ± std over seeds)", f"test/{m}") for m in metrics]]),
        ws.Section(name="Gap over the baselines", is_open=True,
                   panels=[bars(f"{m} minus its {b} baseline", f"test/{m}_gap_{b}")
                           for m in metrics for b in baselines.get(m, BASELINES)]),
        ws.Section(name="Score against training time", is_open=True,
                   panels=[wr.ScatterPlot(title=f"{m} against training seconds", x=wr.SummaryMetric("test/train_seconds"),
                                          y=wr.SummaryMetric(f"test/{m}")) for m in metrics]),
        ws.Section(name="Training", is_open=False,
                   panels=[wr.LinePlot(title=key, x="trainer/global_step", y=[key]) for key in TRAINING_CURVES]),
        ws.Section(name="Predictions", is_open=False,
                   panels=[wr.WeavePanelSummaryTable(table_name="test/predictions"),
                           wr.MediaBrowser(title="test examples", media_keys=["test/examples"])]),
    ]
    return ws.Workspace(entity=entity, project=project, name=name or f"perceptlm: {group}", sections=sections,
                        runset_settings=ws.RunsetSettings(filters=[expr.Metric("Group") == group],
                                                          groupby=[expr.Config(GROUP_BY)]))


def spec(view: Any) -> dict[str, Any]:
    """The workspace as the JSON W&B stores (no account needed)."""
    return view._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def write_spec(view: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec(view), indent=1) + "\n")
    return path
