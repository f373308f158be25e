"""Aggregate ``results.json`` files into the papers' comparison tables.

DePALM's table: one row per mechanism (preset), one column per benchmark (dataset, its task where
the records hold several tasks of one dataset, plus fraction when below 1): mean and standard
deviation over seeds. DePALM's Score is the mean over benchmarks of ``value / best value in that
column * 100``; rows are ranked by it. Also reported: trainable parameters, perceptual tokens and
train time, and, where the records carry them, the mismatched-media and blind baselines of every
cell with the smallest per-seed margin over each. Written as Markdown and CSV, and as a PNG of quality against train time.

The instruction comparison (Garg & Bas; results of the ``instruct`` task, chosen automatically when
every result is one): one table per task family, one row per configuration (the folder above the
seed folders), the family's metrics and the blind baseline's (perception zeroed) with the gap in
points; hallucination (yes/no F1 and yes-ratio, CHAIR-i/-s) has its own columns. Written as
Markdown and CSV, and as a PNG of each configuration's gap over blind per family.

    perceptlm report RUNS_DIR [RUNS_DIR ...] [--metric accuracy] [--out report]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from perceptlm.evaluation import keys as K

DEFAULT_METRICS = K.HEADLINE


def files_below(name: str, *roots: str | Path) -> list[Path]:
    """Every file called ``name`` below the ``roots``, sorted, each once (a root inside another adds
    nothing); none at all is an error naming the roots."""
    paths = sorted({path for root in roots for path in Path(root).rglob(name)})
    if not paths:
        raise FileNotFoundError(f"no {name} below {', '.join(map(str, roots))}")
    return paths


def load_results(*roots: str | Path) -> list[dict[str, Any]]:
    """Every ``results.json`` below the ``roots``; a file that is not valid JSON is an error naming it."""
    results = []
    for path in files_below("results.json", *roots):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON ({error})") from None
        record["_path"] = str(path)
        results.append(record)
    return results


def benchmark_of(record: dict[str, Any], tasks: dict[str, set[str]] | None = None) -> str:
    """The record's table column: its dataset, with its task where the records hold several tasks
    of that dataset (``tasks``: dataset -> tasks), and its training fraction when below 1."""
    fraction = record.get("fraction")
    name = str(record.get("dataset"))
    if tasks and len(tasks.get(name, ())) > 1:
        name = f"{name} {record.get('task')}"
    return f"{name} {fraction:g}" if fraction not in (None, 1, 1.0) else name


def metric_key(record: dict[str, Any], metrics: tuple[str, ...]) -> str:
    """The first of ``metrics`` the record has."""
    for metric in metrics:
        if record.get(metric) is not None:
            return metric
    raise KeyError(f"{record['_path']}: none of the metrics {list(metrics)} is present")


def metric_of(record: dict[str, Any], metrics: tuple[str, ...], prefix: str = "") -> float | None:
    """The record's value of its first present metric, on the tables' scale (headline metrics x 100);
    with ``prefix`` (``blind_``, ``mismatched_``) that metric's baseline twin, None when absent."""
    metric = metric_key(record, metrics)
    value = record.get(prefix + metric)
    if value is None:
        return None
    return float(value) * 100 if metric in K.HEADLINE else float(value)


def _stats(values: list[float]) -> tuple[float, float, int]:
    """(mean, standard deviation, count) over seeds; the deviation is 0 for a single seed."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def _write_tables(out: str | Path, markdown: str, header: list[str], rows: list[list[Any]]) -> list[Path]:
    """``out.md`` and ``out.csv``; returns those paths and ``out.png``'s, which the caller draws."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".md"), out.with_suffix(".csv"), out.with_suffix(".png")]
    paths[0].write_text(markdown)
    with open(paths[1], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return paths


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


BASELINES = (("mismatched", K.MISMATCHED), ("blind", K.BLIND))


def aggregate(results: list[dict[str, Any]], metrics: tuple[str, ...] = DEFAULT_METRICS) -> dict[str, Any]:
    """Rows (mechanisms) x columns (benchmarks) of (mean, std, seeds), plus Score and rank; per cell
    also the baselines the records carry (mismatched media, blind) and the smallest per-seed margin
    of the model over each."""
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    baselines: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    params: dict[str, int] = {}
    tokens: dict[str, int] = {}
    train: dict[str, list[float]] = defaultdict(list)
    tasks: dict[str, set[str]] = defaultdict(set)
    for record in results:
        tasks[str(record.get("dataset"))].add(str(record.get("task")))
    for record in results:
        row, column = str(record.get("preset")), benchmark_of(record, tasks)
        value = metric_of(record, metrics)
        cells[row][column].append(value)
        for name, prefix in BASELINES:
            baseline = metric_of(record, metrics, prefix)
            if baseline is not None:
                baselines[row][column][name].append(baseline)
                baselines[row][column][f"{name} margin"].append(value - baseline)
        params[row] = int(record.get("trainable_params") or 0)
        if record.get("visual_tokens") is not None:
            tokens[row] = int(record["visual_tokens"])
        if record.get("train_seconds") is not None:
            train[row].append(float(record["train_seconds"]))
    columns = sorted({c for row in cells.values() for c in row})
    best = {c: max(statistics.fmean(cells[r][c]) for r in cells if cells[r].get(c)) for c in columns}
    rows = []
    for name, row in cells.items():
        entries = {c: _stats(v) for c, v in row.items()}
        ratios = [entries[c][0] / best[c] * 100 for c in columns if c in entries and best[c] > 0]
        rows.append({"preset": name, "cells": entries, "score": statistics.fmean(ratios) if ratios else 0.0,
                     "complete": len(entries) == len(columns), "trainable_params": params[name],
                     "visual_tokens": tokens.get(name),
                     "baselines": {c: {k: (min(v) if k.endswith("margin") else _stats(v)) for k, v in b.items()}
                                   for c, b in baselines[name].items()},
                     "train_seconds": statistics.fmean(train[name]) if train[name] else None})
    rows.sort(key=lambda r: (-r["score"], r["preset"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return {"columns": columns, "rows": rows}


def _mean_std(value: tuple[float, float, int]) -> str:
    return f"{value[0]:.2f} ± {value[1]:.2f} (n={value[2]})"


def to_markdown(table: dict[str, Any]) -> str:
    columns = table["columns"]
    head = ["rank", "preset", *columns, "Score", "trainable", "visual tokens", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["rows"]:
        cells = [_mean_std(row["cells"][c]) if c in row["cells"] else "—" for c in columns]
        train = f"{row['train_seconds']:.0f}" if row["train_seconds"] is not None else "—"
        score = f"{row['score']:.1f}" + ("" if row["complete"] else "*")
        visual = str(row["visual_tokens"]) if row["visual_tokens"] is not None else "—"
        lines.append("| " + " | ".join([str(row["rank"]), row["preset"], *cells, score,
                                        f"{row['trainable_params']:,}", visual, train]) + " |")
    lines.append("")
    lines.append("Score: mean over benchmarks of value / best value in the column x 100 (DePALM); "
                 "* = computed over the benchmarks this row has.")
    if any(row["baselines"] for row in table["rows"]):
        lines += ["", "Baselines of the same models: each test sample given another test sample's media "
                  "(mismatched) or zeroed media (blind); margin = the smallest per-seed difference, model "
                  "minus baseline.", "", "| preset | column | model | mismatched | margin | blind | margin |",
                  "|---|---|---|---|---|---|---|"]
        for row in table["rows"]:
            for column in columns:
                baseline = row["baselines"].get(column)
                if not baseline:
                    continue
                parts = [_mean_std(baseline[n]) if n in baseline else "—" for n in ("mismatched", "blind")]
                margins = [f"{baseline[n + ' margin']:+.2f}" if n in baseline else "—" for n in ("mismatched", "blind")]
                lines.append(f"| {row['preset']} | {column} | {_mean_std(row['cells'][column])} | {parts[0]} | "
                             f"{margins[0]} | {parts[1]} | {margins[1]} |")
    return "\n".join(lines) + "\n"


def _baseline_csv(row: dict[str, Any], column: str, name: str) -> tuple[Any, Any]:
    baseline = row["baselines"].get(column, {})
    return (baseline[name][0], baseline[f"{name} margin"]) if name in baseline else ("", "")


def write_report(table: dict[str, Any], out: str | Path) -> list[Path]:
    """``out.md``, ``out.csv`` and ``out.png`` (Score against train time)."""
    header = ["rank", "preset", *[f"{c} {k}" for c in table["columns"] for k in ("mean", "std", "n")],
              *[f"{c} {name} {k}" for c in table["columns"] for name, _ in BASELINES for k in ("mean", "margin")],
              "score", "trainable_params", "visual_tokens", "train_seconds"]
    rows = [[row["rank"], row["preset"], *[x for c in table["columns"] for x in (row["cells"].get(c) or ("", "", ""))],
             *[x for c in table["columns"] for name, _ in BASELINES for x in _baseline_csv(row, c, name)],
             f"{row['score']:.4f}", row["trainable_params"], "" if row["visual_tokens"] is None else row["visual_tokens"],
             row["train_seconds"] if row["train_seconds"] is not None else ""] for row in table["rows"]]
    paths = _write_tables(out, to_markdown(table), header, rows)
    plt = _pyplot()
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


# Per family: (column title, results key); the first is the family's headline metric, compared with
# the blind baseline's ``blind_`` twin. Values are on a 0-100 scale (CIDEr x 100, as papers print it).
FAMILIES: dict[str, list[tuple[str, str]]] = {
    "conversation": [("accuracy", K.prefixed("conversation", K.ACCURACY)),
                     ("ROUGE-L", K.prefixed("conversation", K.ROUGE_L))],
    "mcq": [("accuracy (letter)", K.prefixed("mcq", K.ACCURACY)), ("accuracy (likelihood)", K.LIKELIHOOD_ACCURACY),
            ("unparsed", K.prefixed("mcq", K.UNPARSED))],
    "yesno": [("accuracy", K.prefixed("yesno", K.ACCURACY)), ("F1", K.prefixed("yesno", K.F1)),
              ("yes-ratio", K.prefixed("yesno", K.YES_RATIO))],
    "caption": [("CIDEr", K.prefixed("caption", K.CIDER)), ("CHAIR-i", K.prefixed("caption", K.CHAIR_I)),
                ("CHAIR-s", K.prefixed("caption", K.CHAIR_S))],
}
# Further metrics compared with their blind twin, as "blind (name)" and "gap (name)" columns where any
# run has the twin: multiple choice by option likelihood, which does not need the LLM to bind letters.
MORE_GAPS: dict[str, list[tuple[str, str]]] = {"mcq": [("likelihood", K.LIKELIHOOD_ACCURACY)]}


def _blind_and_gap(records: list[dict[str, Any]], key: str) -> tuple[Any, Any]:
    """(blind, gap) statistics of ``key`` over the records that have its ``blind_`` twin, in points."""
    twin = K.blind(key)
    paired = [r for r in records if r.get(key) is not None and r.get(twin) is not None]
    if not paired:
        return None, None
    return (_stats([100 * float(r[twin]) for r in paired]),
            _stats([100 * (float(r[key]) - float(r[twin])) for r in paired]))


def configuration_of(record: dict[str, Any]) -> str:
    """A run's configuration: the folder above its ``seed*`` folder (else the preset)."""
    path = Path(record["_path"]).parent
    if path.name.startswith("seed") and path.parent.name:
        return path.parent.name
    return str(record.get("preset"))


def aggregate_instruction(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per family: rows of (configuration, metrics, blind headline, gap), each (mean, std, n) over seeds."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in results:
        runs[configuration_of(record)].append(record)
    tables = {}
    for family, columns in FAMILIES.items():
        headline = columns[0][1]
        rows = []
        for name, records in sorted(runs.items()):
            with_family = [r for r in records if r.get(headline) is not None]
            if not with_family:
                continue
            cells = {}
            for title, key in columns:
                values = [100 * float(r[key]) for r in with_family if r.get(key) is not None]
                values = [v for v in values if v == v]  # CHAIR is nan without any mention
                cells[title] = _stats(values) if values else None
            cells["blind"], cells["gap"] = _blind_and_gap(with_family, headline)
            for title, key in MORE_GAPS.get(family, []):
                cells[f"blind ({title})"], cells[f"gap ({title})"] = _blind_and_gap(with_family, key)
            rows.append({"configuration": name, "cells": cells})
        if rows:
            more = [f"{kind} ({title})" for title, _ in MORE_GAPS.get(family, []) for kind in ("blind", "gap")]
            more = [c for c in more if any(row["cells"][c] is not None for row in rows)]
            tables[family] = {"columns": [t for t, _ in columns] + ["blind", "gap", *more], "rows": rows}
    return {"families": tables}


def _cell(value: tuple[float, float, int] | None) -> str:
    if value is None:
        return "—"
    mean, std, n = value
    return f"{mean:.1f}" if n == 1 else f"{mean:.1f} ± {std:.1f} (n={n})"


def instruction_markdown(report: dict[str, Any]) -> str:
    lines = []
    for family, table in report["families"].items():
        lines += [f"### {family}", "", "| configuration | " + " | ".join(table["columns"]) + " |",
                  "|" + "---|" * (len(table["columns"]) + 1)]
        for row in table["rows"]:
            lines.append(f"| {row['configuration']} | " + " | ".join(_cell(row["cells"][c]) for c in table["columns"]) + " |")
        lines.append("")
    lines.append("Values x 100 (CIDEr x 100); blind = the family's first metric with perception zeroed; gap = "
                 "that metric minus blind, in points (blind / gap (likelihood): the same for multiple choice by "
                 "option likelihood); mean ± std over seeds when n > 1.")
    return "\n".join(lines) + "\n"


def write_instruction_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """``out.md``, ``out.csv`` (one line per family x configuration x column) and ``out.png``."""
    rows = [[family, row["configuration"], column, *(row["cells"][column] or ("", "", ""))]
            for family, table in report["families"].items() for row in table["rows"] for column in table["columns"]]
    paths = _write_tables(out, instruction_markdown(report), ["family", "configuration", "column", "mean", "std", "n"],
                          rows)
    plt = _pyplot()

    families = list(report["families"])
    configurations = sorted({r["configuration"] for t in report["families"].values() for r in t["rows"]})
    figure, axis = plt.subplots(figsize=(1.6 * len(families) + 3, 4))
    width = 0.8 / max(1, len(configurations))
    for k, name in enumerate(configurations):
        gaps = []
        for family in families:
            row = next((r for r in report["families"][family]["rows"] if r["configuration"] == name), None)
            gaps.append(row["cells"]["gap"][0] if row and row["cells"]["gap"] else float("nan"))
        axis.bar([f + k * width for f in range(len(families))], gaps, width, label=name)
    axis.axhline(20, color="gray", linestyle="--", linewidth=1)
    axis.set_xticks([f + width * (len(configurations) - 1) / 2 for f in range(len(families))], families)
    axis.set_ylabel("points over blind")
    axis.set_title("what perception adds, per task family")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(paths[2], dpi=120)
    plt.close(figure)
    return paths


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="perceptlm report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="folder(s) searched for results.json files")
    parser.add_argument("--metric", action="append", help="metric key(s) to read, in order of preference")
    parser.add_argument("--out", default="report", help="output path without suffix")
    options = parser.parse_args(args)
    results = load_results(*options.runs)
    if all(r.get("task") == "instruct" for r in results) and not options.metric:
        report = aggregate_instruction(results)
        paths = write_instruction_report(report, options.out)
        print(instruction_markdown(report))
        print("written: " + ", ".join(str(p) for p in paths))
        return
    table = aggregate(results, tuple(options.metric or DEFAULT_METRICS))
    paths = write_report(table, options.out)
    print(to_markdown(table))
    print("written: " + ", ".join(str(p) for p in paths))
