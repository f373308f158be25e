"""Aggregate ``results.json`` files into the papers' comparison table.

One row per mechanism (preset), one column per benchmark (dataset, plus fraction when below 1):
mean and standard deviation over seeds. DePALM's Score is the mean over benchmarks of
``value / best value in that column * 100``; rows are ranked by it. Also reported: trainable
parameters and train time. Written as Markdown and CSV, and as a PNG of quality against train time.

    perceptlm report RUNS_DIR [--metric accuracy] [--out report]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

DEFAULT_METRICS = ("cider", "accuracy", "spider")


def load_results(root: str | Path) -> list[dict[str, Any]]:
    """Every ``results.json`` below ``root``; a file that is not valid JSON is an error naming it."""
    results = []
    for path in sorted(Path(root).rglob("results.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON ({error})") from None
        record["_path"] = str(path)
        results.append(record)
    if not results:
        raise FileNotFoundError(f"no results.json below {root}")
    return results


def benchmark_of(record: dict[str, Any]) -> str:
    fraction = record.get("fraction")
    name = str(record.get("dataset"))
    return f"{name} {fraction:g}" if fraction not in (None, 1, 1.0) else name


def metric_of(record: dict[str, Any], metrics: tuple[str, ...]) -> float:
    for metric in metrics:
        if record.get(metric) is not None:
            value = float(record[metric])
            return value * 100 if metric in ("cider", "accuracy", "spider") else value
    raise KeyError(f"{record['_path']}: none of the metrics {list(metrics)} is present")


def aggregate(results: list[dict[str, Any]], metrics: tuple[str, ...] = DEFAULT_METRICS) -> dict[str, Any]:
    """Rows (mechanisms) x columns (benchmarks) of (mean, std, seeds), plus Score and rank."""
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    params: dict[str, int] = {}
    train: dict[str, list[float]] = defaultdict(list)
    for record in results:
        row = str(record.get("preset"))
        cells[row][benchmark_of(record)].append(metric_of(record, metrics))
        params[row] = int(record.get("trainable_params") or 0)
        if record.get("train_seconds") is not None:
            train[row].append(float(record["train_seconds"]))
    columns = sorted({c for row in cells.values() for c in row})
    best = {c: max(statistics.fmean(cells[r][c]) for r in cells if cells[r].get(c)) for c in columns}
    rows = []
    for name, row in cells.items():
        entries = {c: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                   for c, v in row.items()}
        ratios = [entries[c][0] / best[c] * 100 for c in columns if c in entries and best[c] > 0]
        rows.append({"preset": name, "cells": entries, "score": statistics.fmean(ratios) if ratios else 0.0,
                     "complete": len(entries) == len(columns), "trainable_params": params[name],
                     "train_seconds": statistics.fmean(train[name]) if train[name] else None})
    rows.sort(key=lambda r: -r["score"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return {"columns": columns, "rows": rows}


def to_markdown(table: dict[str, Any]) -> str:
    columns = table["columns"]
    head = ["rank", "preset", *columns, "Score", "trainable", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["rows"]:
        cells = [f"{row['cells'][c][0]:.2f} ± {row['cells'][c][1]:.2f} (n={row['cells'][c][2]})"
                 if c in row["cells"] else "—" for c in columns]
        train = f"{row['train_seconds']:.0f}" if row["train_seconds"] is not None else "—"
        score = f"{row['score']:.1f}" + ("" if row["complete"] else "*")
        lines.append("| " + " | ".join([str(row["rank"]), row["preset"], *cells, score,
                                        f"{row['trainable_params']:,}", train]) + " |")
    lines.append("")
    lines.append("Score: mean over benchmarks of value / best value in the column x 100 (DePALM); "
                 "* = computed over the benchmarks this row has.")
    return "\n".join(lines) + "\n"


def write_report(table: dict[str, Any], out: str | Path) -> list[Path]:
    """``out.md``, ``out.csv`` and ``out.png`` (Score against train time)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".md"), out.with_suffix(".csv"), out.with_suffix(".png")]
    paths[0].write_text(to_markdown(table))
    with open(paths[1], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "preset", *[f"{c} {k}" for c in table["columns"] for k in ("mean", "std", "n")],
                         "score", "trainable_params", "train_seconds"])
        for row in table["rows"]:
            values = [x for c in table["columns"] for x in (row["cells"].get(c) or ("", "", ""))]
            writer.writerow([row["rank"], row["preset"], *values, f"{row['score']:.4f}", row["trainable_params"],
                             row["train_seconds"] if row["train_seconds"] is not None else ""])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for row in table["rows"]:
        if row["train_seconds"] is not None:
            axis.scatter(row["train_seconds"], row["score"])
            axis.annotate(row["preset"], (row["train_seconds"], row["score"]), fontsize=8)
    axis.set_xlabel("train time (s)")
    axis.set_ylabel("Score")
    axis.set_title("quality against train time")
    figure.tight_layout()
    figure.savefig(paths[2], dpi=120)
    plt.close(figure)
    return paths


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="perceptlm report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", help="folder searched for results.json files")
    parser.add_argument("--metric", action="append", help="metric key(s) to read, in order of preference")
    parser.add_argument("--out", default="report", help="output path without suffix")
    options = parser.parse_args(args)
    table = aggregate(load_results(options.runs), tuple(options.metric or DEFAULT_METRICS))
    paths = write_report(table, options.out)
    print(to_markdown(table))
    print("written: " + ", ".join(str(p) for p in paths))
