"""Run notebooks top to bottom at their default parameters and print each one's wall time
(the README's notebook timings). Executed copies go to ``--out``; nothing in ``notebooks/``
changes.

    python scripts/time_notebooks.py notebooks/04_lineas_sparsity.ipynb [--out DIR]

Time on an otherwise idle machine: torch's threads contend with anything else running.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results/notebooks"))
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()
    missing = [str(p) for p in args.notebooks if not p.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.notebooks:
        nb = nbformat.read(path, 4)
        start = time.perf_counter()
        try:  # run where the outputs go, so files a notebook writes land there too
            NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(args.out)}}).execute()
            status = "ok"
        except CellExecutionError as err:
            status, failed = f"FAILED: {str(err)[-500:]}", failed + 1
        wall = time.perf_counter() - start
        nbformat.write(nb, args.out / path.name)
        print(f"{path.name}: {wall:.0f} s ({wall / 60:.1f} min) {status}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
