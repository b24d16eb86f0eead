"""Figure of λ sweeps as toxicity/utility fronts (``experiments.fronts`` frames): mean
toxicity against the perplexity change and against the zero-shot accuracy change, one row per
map with its DSAS variants in the same colour, the unsteered model as a star."""

from __future__ import annotations

import math

import pandas as pd

from .base import figure, need_columns
from .evaluation import _palette

_PANELS = [("delta_ppl_rel", 100.0, "perplexity change vs unsteered (%)", False),
           ("diff_accuracy", 100.0, "zero-shot accuracy change (points, acc_norm)", True)]


def plot_fronts(frame: pd.DataFrame, title: str | None = None):
    """Small multiples: one row per family (a map with its DSAS / E2E-DSAS variants, from the
    frame's ``base`` column when present), one column per utility measure the frame has (PPL
    always; accuracy when measured). x = the measure's change vs unsteered, y = mean toxicity
    score (± SE); lines join a method's λ points in λ order, the other families sit in grey
    behind each row, and the unsteered model is the star at x = 0. Axes are shared, so rows
    compare directly."""
    need_columns(frame, ["method", "strength", "mean_score", "mean_score_se", "delta_ppl_rel"],
                 "plot_fronts", "fronts")
    panels = [p for p in _PANELS if p[0] in frame.columns and frame[p[0]].notna().any()]
    base = frame[frame["method"] == "unsteered"]
    steered = frame[frame["method"] != "unsteered"].copy()
    if "base" not in steered.columns:
        steered["base"] = steered["method"].str.replace("dsas+", "", regex=False)
    families = list(dict.fromkeys(steered["base"]))
    colours = dict(zip(families, _palette(len(families))))
    fig, axes = figure(len(families), len(panels), squeeze=False, sharex="col", sharey=True,
                       size=(5.0 * len(panels) + 1.8, 2.9 * len(families) + 0.6))
    for row, family in zip(axes, families):
        for ax, (col, scale, label, flip) in zip(row, panels):
            for _, part in steered[steered["base"] != family].groupby("method", sort=False):
                part = part.sort_values("strength")  # context: every other front, in grey
                ax.plot(scale * part[col], part["mean_score"], "-", color="0.8", lw=0.8,
                        zorder=1)
            _draw_family(ax, steered[steered["base"] == family], col, scale, colours[family])
            if not base.empty:
                ax.errorbar([0.0], base["mean_score"], yerr=base["mean_score_se"], fmt="*",
                            ms=12, color="black", label="unsteered", zorder=3)
            ax.axvline(0, color="black", lw=0.8)
            _log_if_wide(ax, scale * steered[col])
        row[0].set_ylabel("mean toxicity (± SE)")
        row[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    for ax, (col, scale, label, flip) in zip(axes[-1], panels):
        ax.set_xlabel(label)
        if flip:
            ax.invert_xaxis()  # accuracy lost grows to the right, like the PPL panel
    fig.suptitle(title or "λ sweeps: toxicity against utility (lower left is better)")
    fig.tight_layout()
    return fig


_STYLES = [("o-", None), ("s--", "white"), ("D:", "white"), ("^-.", "white")]


def _draw_family(ax, part: pd.DataFrame, col: str, scale: float, colour) -> None:
    """The family's methods in one colour: the map solid, each gated variant in its own line
    style; the strongest point of each is labelled with its λ."""
    methods = list(dict.fromkeys(part.sort_values("gated", kind="stable")["method"]
                                 if "gated" in part.columns else part["method"]))
    for i, method in enumerate(methods):
        rows = part[part["method"] == method].sort_values("strength")
        fmt, mfc = _STYLES[i % len(_STYLES)]
        ax.errorbar(scale * rows[col], rows["mean_score"], yerr=rows["mean_score_se"], fmt=fmt,
                    ms=5, lw=1.2, capsize=2, color=colour, mfc=mfc, label=method, zorder=2)
        top = rows.iloc[-1]
        ax.annotate(f"λ={top['strength']:g}", (scale * top[col], top["mean_score"]),
                    fontsize=7, xytext=(3, -8), textcoords="offset points")


def _log_if_wide(ax, xs: pd.Series) -> None:
    """Symmetric-log x when over-steered points sit orders of magnitude out."""
    xs = xs.dropna().abs()
    if len(xs) and xs.max() > 100 and math.isfinite(xs.max()):
        ax.set_xscale("symlog", linthresh=10.0)
