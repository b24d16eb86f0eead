"""The maintainer scripts behind the README's notebook timings answer bad input in one line,
exit status 2."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_time_notebooks_names_a_missing_notebook():
    out = _run("scripts/time_notebooks.py", "notebooks/nope.ipynb")
    assert out.returncode == 2 and out.stderr.strip() == \
        "error: no such notebook: notebooks/nope.ipynb"


def test_nb04_evaluation_says_how_to_make_the_fits(tmp_path):
    out = _run("scripts/nb04_evaluation.py", "--cache", str(tmp_path))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "no γ-path fits" in out.stderr and "--only sparsity" in out.stderr
