"""The notebooks in ``notebooks/``: committed clean, and each runs end to end.

Every notebook is executed with nbclient after its ``parameters`` cell (tagged as papermill
expects) is replaced by small settings on the random ``tiny-gpt2`` model, in a temporary working
directory, so nothing is written into the repository. A failing cell fails the test with the
notebook's name, the cell's index and source, and the error.
"""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 240  # seconds per cell; the small runs take a few seconds per cell on a free CPU
KERNEL = "python3"

# Applied to every notebook whose parameters cell defines the name.
SHARED = {"MODEL": "tiny-gpt2", "N": 8, "SEED": 0, "STEPS": 2, "N_PROMPTS": 2,
          "MAX_PROMPT_TOKENS": 32, "MAX_NEW_TOKENS": 4, "SAMPLES": 1, "N_PPL": 4, "N_HELD": 4,
          "FIT_SET": "wiki"}  # the random model's continuations are never toxic
# Per notebook; every name here must exist in that notebook's parameters cell.
SMALL = {
    "01_quickstart": {},
    "02_compare_methods": {"STRENGTHS": [0.5, 1.0], "N_CALIB": 4, "CACHE_DIR": None,
                           "METHODS": ["aura", "mean_shift", "linear_act", "lineas"]},
    "03_neuron_auroc": {"K_EXPERTS": 3, "N_TOKENS": 2},
    "04_lineas_sparsity": {"GAMMAS": [0.0, 1.0, 100.0], "STEPS": 5, "EVALUATE": True,
                           "CACHE_DIR": None},
    "05_dsas_token_scales": {"BASE_METHOD": "mean_shift"},
    "06_sae_overlap": {"SIZE": "quick", "K": 5, "SAE_CACHE": "sae_cache"},
    "07_attribution": {"N_ATTR": 4, "TOP_K": 10, "IG_STEPS": 2, "KS": [1, 5], "N_RANDOM": 2,
                       "N_CALIB": 4},
}


def _name(path: Path) -> str:
    return path.stem


def parameters_cell(nb) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged 'parameters', found {len(cells)}"
    assert cells[0].cell_type == "code", "the 'parameters' cell must be a code cell"
    return cells[0]


def read_parameters(source: str) -> dict:
    """``NAME = literal`` assignments of a parameters cell, in order (papermill-style: nothing
    but literals, so a runner can replace them)."""
    params = {}
    for stmt in ast.parse(source).body:
        ok = (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
              and isinstance(stmt.targets[0], ast.Name))
        if not ok:
            raise AssertionError(f"parameters cell: line {stmt.lineno} is not `NAME = literal`")
        try:
            params[stmt.targets[0].id] = ast.literal_eval(stmt.value)
        except ValueError:
            raise AssertionError(f"parameters cell: {stmt.targets[0].id} is not a literal "
                                 f"(line {stmt.lineno})") from None
    return params


def small_source(name: str, source: str) -> str:
    params = read_parameters(source)
    unknown = sorted(set(SMALL[name]) - set(params))
    assert not unknown, f"{name}: small settings for {unknown}, which its parameters cell lacks"
    params.update({k: v for k, v in SHARED.items() if k in params})
    params.update(SMALL[name])
    return "\n".join(f"{k} = {v!r}" for k, v in params.items()) + "\n"


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _failure(name: str, nb, err: Exception) -> str:
    """Notebook, cell index and source, and the error of the first failed cell."""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                trace = ANSI.sub("", "\n".join(out.get("traceback", [])))
                return (f"{name}.ipynb: cell {i} raised {out['ename']}: {out['evalue']}\n"
                        f"--- cell source ---\n{cell.source}\n--- traceback ---\n{trace}")
    return f"{name}.ipynb: {type(err).__name__}: {ANSI.sub('', str(err))}"


def test_notebooks_exist_and_each_has_small_settings():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
    assert sorted(_name(p) for p in NOTEBOOKS) == sorted(SMALL), \
        "every notebook needs an entry in SMALL (and every entry a notebook)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown", "start with a markdown introduction"
    params = parameters_cell(nb)
    read_parameters(params.source)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code is params, "the parameters cell must be the first code cell"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; strip them"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state in the metadata; strip it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_runs_on_small_settings(path, tmp_path):
    name = _name(path)
    nb = nbformat.read(path, as_version=4)
    cell = parameters_cell(nb)
    cell.source = small_source(name, cell.source)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as err:
        pytest.fail(_failure(name, nb, err), pytrace=False)
    print(f"{name}: {time.perf_counter() - start:.1f} s")
