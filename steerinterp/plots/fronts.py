"""Figure of λ sweeps as toxicity/utility fronts (``evaluate.fronts`` frames): mean toxicity
against the perplexity change and against the zero-shot accuracy change, each map in its own
colour, its DSAS variant dashed in the same colour, the unsteered model as a star."""

from __future__ import annotations

import math

import pandas as pd

from .base import figure, need_columns
from .evaluation import _palette

_PANELS = [("delta_ppl_rel", 100.0, "perplexity change vs unsteered (%)", False),
           ("diff_accuracy", 100.0, "zero-shot accuracy change (points, acc_norm)", True)]


def plot_fronts(frame: pd.DataFrame, title: str | None = None):
    """One panel per utility measure the frame has (PPL always; accuracy when measured):
    x = the measure's change vs unsteered, y = mean toxicity score (± SE). Lines join a
    method's λ points in λ order; the unsteered model sits at x = 0."""
    need_columns(frame, ["method", "strength", "mean_score", "mean_score_se", "delta_ppl_rel"],
                 "plot_fronts", "fronts")
    panels = [p for p in _PANELS if p[0] in frame.columns and frame[p[0]].notna().any()]
    fig, axes = figure(1, len(panels), size=(5.2 * len(panels) + 1.6, 4.4), sharey=True,
                       squeeze=False)
    base = frame[frame["method"] == "unsteered"]
    steered = frame[frame["method"] != "unsteered"].copy()
    steered["map"] = steered["method"].str.replace("dsas+", "", regex=False)
    colours = dict(zip(dict.fromkeys(steered["map"]), _palette(steered["map"].nunique())))
    for ax, (col, scale, label, flip) in zip(axes[0], panels):
        for method, part in steered.groupby("method", sort=False):
            part = part.sort_values("strength")
            gated = method.startswith("dsas+")
            ax.errorbar(scale * part[col], part["mean_score"], yerr=part["mean_score_se"],
                        fmt="s--" if gated else "o-", ms=5, lw=1.2, capsize=2,
                        color=colours[part["map"].iloc[0]], mfc="white" if gated else None,
                        label=method)
            top = part.iloc[-1]  # label the strongest point with its λ
            ax.annotate(f"λ={top['strength']:g}", (scale * top[col], top["mean_score"]),
                        fontsize=7, xytext=(3, -8), textcoords="offset points")
        if not base.empty:
            ax.errorbar([0.0], base["mean_score"], yerr=base["mean_score_se"], fmt="*",
                        ms=13, color="black", label="unsteered")
        ax.axvline(0, color="black", lw=0.8)
        if flip:
            ax.invert_xaxis()  # accuracy lost grows to the right, like the PPL panel
        _log_if_wide(ax, scale * steered[col])
        ax.set_xlabel(label)
    axes[0][0].set_ylabel("mean toxicity score of continuations (± SE)")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(title or "λ sweeps: toxicity against utility (lower left is better)")
    return fig


def _log_if_wide(ax, xs: pd.Series) -> None:
    """Symmetric-log x when over-steered points sit orders of magnitude out."""
    xs = xs.dropna().abs()
    if len(xs) and xs.max() > 100 and math.isfinite(xs.max()):
        ax.set_xscale("symlog", linthresh=10.0)
