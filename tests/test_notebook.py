"""The quickstart notebook runs top to bottom (so it cannot rot)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "experiments" / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["QUICKSTART_STEPS"] = "3"
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert "depalm-qp-l0" in outputs and "-> " in outputs and "reference:" in outputs
    last = notebook.cells[-1]["outputs"][0]
    assert "image/png" in last.get("data", {})


STUDY = NOTEBOOK.with_name("study.ipynb")
RECORDS = Path(__file__).parents[1] / "experiments" / "paper" / "depalm" / "mini" / "results" / "records"


def test_study_notebook_draws_the_committed_grid(monkeypatch):
    """The study notebook reads the committed DePALM mini records into a DataFrame; its table has a
    row per mechanism with the report's Score, and it draws the score-against-time plot."""
    from perceptlm.evaluation.report import aggregate, load_results

    monkeypatch.setenv("STUDY_RECORDS", str(RECORDS))
    monkeypatch.setenv("WANDB_MODE", "offline")
    notebook = nbformat.read(STUDY, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    texts = [o.get("text") or o.get("data", {}).get("text/plain", "") for o in outputs]
    records = load_results(RECORDS)
    assert f"{len(records)} runs from {RECORDS}" in texts[0]
    table = next(t for t in texts if "Score" in t and "±" in t)
    scores = {line.split()[0]: float(line.split()[-1]) for line in table.splitlines()[2:]}
    expected = {row["preset"]: round(row["score"], 1) for row in aggregate(records)["rows"]}
    assert scores == expected
    assert "image/png" in outputs[-1].get("data", {})
