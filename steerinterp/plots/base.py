"""Shared figure conventions: one style, and ``save_figure`` writing PNG + the CSV behind it."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files first; notebooks switch back with %matplotlib inline
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..io import atomic_write, ensure_writable_dir  # noqa: E402
from ..sites import POINTS  # noqa: E402

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 160, "savefig.bbox": "tight",
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3,
}


def figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0), **kw):
    """``plt.subplots`` under the house style; returns ``(fig, axes)``."""
    with plt.rc_context(STYLE):
        return plt.subplots(nrows, ncols, figsize=size, **kw)


def ordered_points(df: pd.DataFrame) -> list[str]:
    """The frame's ``point`` values in forward order within a layer (``sites.POINTS``)."""
    return sorted(df["point"].unique(), key=lambda p: POINTS.index(p) if p in POINTS else 99)


def need_columns(df: pd.DataFrame, columns: list[str], who: str, kind: str = "") -> None:
    """Raise a ValueError naming ``who`` and what is missing unless ``df`` is a non-empty
    DataFrame with ``columns`` (``kind`` names the expected frame, e.g. "layer_sparsity")."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{who} needs a DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing or df.empty:
        frame = f"{kind} frame" if kind else "frame"
        raise ValueError(f"{who} needs a non-empty {frame} with columns {columns}; "
                         f"missing: {missing or 'rows'}")


def save_figure(fig, data: pd.DataFrame, name: str, folder: str | os.PathLike = "figures",
                close: bool = True) -> Path:
    """Write ``folder/name.png`` and ``folder/name.csv`` (the frame it was drawn from).

    Both files are written to a temporary name and renamed, so a crash never leaves a
    half-written figure next to a stale CSV. Returns the PNG path.
    """
    folder = ensure_writable_dir(Path(folder))
    png, csv = folder / f"{name}.png", folder / f"{name}.csv"
    # Six significant digits: the figure shows fewer, and the CSVs are committed.
    atomic_write(csv, lambda p: data.to_csv(p, index=False, float_format="%.6g"))
    atomic_write(png, lambda p: fig.savefig(p, format="png", **_save_kw()))
    if close:
        plt.close(fig)
    return png


def _save_kw() -> dict:
    return {"dpi": STYLE["savefig.dpi"], "bbox_inches": "tight"}
