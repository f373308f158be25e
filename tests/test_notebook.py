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
