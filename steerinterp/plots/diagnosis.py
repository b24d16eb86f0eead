"""Figure of where a steerer's perplexity cost comes from (``analysis.diagnosis`` frames): per
site, the PPL with only that site steered and with every other site steered, and the W2 distance
to the target before and after steering."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .attribution import _steering
from .base import STYLE, figure, need_columns, ordered_points

# (column, marker, filled, legend text) per panel; colour says the point, marker the series.
_PPL = [("ratio_only", "o", True, "only this site"),
        ("ratio_without", "v", False, "all sites but this one")]
_W2 = [("w2_before", "o", False, "unsteered"), ("w2_after", "o", True, "steered")]


def _markers(ax, df: pd.DataFrame, series, points: list[str]) -> None:
    """One marker per site and series at x = layer, points and series side by side."""
    width = 0.8 / len(points)
    for j, point in enumerate(points):
        sub = df[df["point"] == point].sort_values("layer")
        for k, (column, marker, filled, text) in enumerate(series):
            shift = (j - (len(points) - 1) / 2) * width + (k - (len(series) - 1) / 2) * width / 3
            ax.scatter(sub["layer"] + shift, sub[column], marker=marker, s=30, zorder=3,
                       color=f"C{j}" if filled else "none", edgecolors=f"C{j}",
                       label=f"{point}: {text}")
    layers = np.sort(df["layer"].unique())
    step = max(1, math.ceil(len(layers) / 24))  # keep tick labels apart on deep models
    ax.set_xticks(layers[::step])


def _log_if_wide(ax, values) -> None:
    """Log y-axis when the values are positive and span an order of magnitude or more."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) and v.min() > 0 and v.max() / v.min() >= 10:
        ax.set_yscale("log")


def plot_diagnosis(df: pd.DataFrame):
    """Top: PPL ÷ unsteered PPL per layer (x) and point (colour), with only this site steered
    (filled) and with all sites but this one (hollow); dashed: all sites. Bottom, when the frame
    has W2 values: mean per-unit W2² to the target, unsteered (hollow) and steered (filled).
    Log axes where the values span an order of magnitude."""
    need_columns(df, ["layer", "point", "ppl_only", "ppl_without", "ppl_all", "ppl_unsteered"],
                 "plot_diagnosis", "diagnose")
    df = df.assign(ratio_only=df["ppl_only"] / df["ppl_unsteered"],
                   ratio_without=df["ppl_without"] / df["ppl_unsteered"])
    has_w2 = ({"w2_before", "w2_after"} <= set(df.columns)
              and df[["w2_before", "w2_after"]].notna().any().any())
    points = ordered_points(df)
    n_layers = df["layer"].nunique()
    fig, axes = figure(2 if has_w2 else 1, 1, sharex=True, squeeze=False, layout="constrained",
                       size=(max(6.0, 0.32 * n_layers * max(1, len(points) / 2) + 3.0),
                             2.8 * (2 if has_w2 else 1) + 0.6))
    base, full = float(df["ppl_unsteered"].iloc[0]), float(df["ppl_all"].iloc[0])
    with plt.rc_context(STYLE):
        ax = axes[0, 0]
        _markers(ax, df, _PPL, points)
        ax.axhline(full / base, color="k", ls="--", lw=1, label="all sites")
        ax.axhline(1.0, color="0.3", lw=0.8)  # unsteered
        _log_if_wide(ax, [*df["ratio_only"], *df["ratio_without"], full / base, 1.0])
        ax.set_ylabel("PPL ÷ unsteered PPL")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        if has_w2:
            ax = axes[1, 0]
            _markers(ax, df, _W2, points)
            _log_if_wide(ax, [*df["w2_before"], *df["w2_after"]])
            n = int(df["n_w2"].iloc[0]) if "n_w2" in df else None
            ax.set_ylabel("W2² to the target,\nmean over units")
            ax.set_title(f"source vs target activations ({n} per side)" if n else
                         "source vs target activations", fontsize=9)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        axes[-1, 0].set_xlabel("layer")
        fig.suptitle(f"Where the perplexity cost comes from, per site{_steering(df)}\n(PPL "
                     f"{full:.3g} with all sites vs {base:.3g} unsteered)")
    return fig
