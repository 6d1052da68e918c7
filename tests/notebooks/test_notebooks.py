"""The tutorial notebooks (notebooks/*.ipynb) execute from top to bottom in local mode, and are
stored without outputs.

Each notebook runs in a fresh Jupyter kernel of this interpreter through papermill, from
``notebooks/`` (as a person runs them), with a time limit per cell. The executed copies go to a
temporary folder: the stored notebooks are never rewritten by a test run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
CELL_TIMEOUT_S = 240


def test_the_series_is_complete():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 8)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, f"{path.name}: cells {dirty} keep outputs; run `make strip-notebooks`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cluster_steps_take_a_parameter(path):
    """Notebooks that would touch a cluster or a Docker engine have a tagged parameters cell
    (papermill -p CLUSTER ...) whose default is local mode."""
    nb = json.loads(path.read_text())
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if path.name[:2] in ("03", "04", "05", "06", "07"):
        assert len(params) == 1, path.name
        assert 'CLUSTER = "local"' in "".join(params[0]["source"])
    else:
        assert not params


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_local_mode(path, tmp_path):
    try:
        import papermill
    except ImportError:
        pytest.fail("the `notebooks` extra (papermill) is not installed: run `make venv`")
    out = tmp_path / path.name
    papermill.execute_notebook(
        str(path),
        str(out),
        cwd=str(path.parent),
        kernel_name="python3",
        execution_timeout=CELL_TIMEOUT_S,
        progress_bar=False,
        log_output=False,
        start_timeout=120,
    )
    executed = json.loads(out.read_text())
    errors = [
        o
        for c in executed["cells"]
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    # Every code cell ran (papermill stops at the first failure and raises above).
    code_cells = [c for c in executed["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code_cells), sys.executable
