"""Figures of the SAE-overlap analysis (``analysis.sae_overlap`` frames): which SAE features a
steering shift points along, which features steering suppresses on source vs target text, and
how much methods agree on the suppressed features."""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from .base import STYLE, figure, need_columns

DOWN, UP = "#3b75af", "#c23b22"  # suppressed / raised (and negative / positive cosine)
SETS = {"source": "#c23b22", "target": "#3b75af"}


def _methods(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["method"])) if "method" in df else [""]


def _rows(df: pd.DataFrame, method: str) -> pd.DataFrame:
    return df[df["method"] == method] if "method" in df else df


def _label(feature: int, labels: Mapping[int, str] | None, width: int = 34) -> str:
    text = (labels or {}).get(int(feature), f"f{int(feature)}")
    return text if len(text) <= width else text[:width - 1] + "…"


def plot_shift_alignment(df: pd.DataFrame, n: int = 12,
                         labels: Mapping[int, str] | None = None):
    """The ``n`` features whose decoder direction is most aligned with the steering shift
    (``shift_alignment`` / ``SaeOverlap.alignment`` frame), one panel per method: signed
    cosine as bars, dotted lines at ``±1/sqrt(d_in)`` (the scale of a random direction's
    cosine). ``labels``: ``{feature: text}`` (e.g. ``feature_labels(top_tokens)``)."""
    need_columns(df, ["feature", "cosine", "abs_cosine", "d_in"], "plot_shift_alignment")
    methods = _methods(df)
    fig, axes = figure(1, len(methods), squeeze=False, layout="constrained",
                       size=(4.8 * len(methods) + 1.0, 0.3 * n + 1.6))
    with plt.rc_context(STYLE):
        for ax, method in zip(axes[0], methods):
            sub = _rows(df, method).nlargest(n, "abs_cosine").iloc[::-1]
            y = np.arange(len(sub))
            ax.barh(y, sub["cosine"], color=np.where(sub["cosine"] < 0, DOWN, UP), height=0.7)
            ax.set_yticks(y, [_label(f, labels) for f in sub["feature"]], fontsize=8)
            ref = 1 / math.sqrt(float(sub["d_in"].iloc[0]))
            for x in (-ref, ref):
                ax.axvline(x, color="0.3", ls=":", lw=1.2)
            ax.axvline(0, color="0.2", lw=0.8)
            lim = max(float(sub["abs_cosine"].max()), ref) * 1.1
            ax.set_xlim(-lim, lim)
            ax.set_xlabel("cosine(mean steering shift, decoder direction)")
            ax.set_title(method or "steering shift", loc="left")
            ax.grid(axis="y", visible=False)
        handles = [Patch(color=UP, label="along the feature"),
                   Patch(color=DOWN, label="against the feature"),
                   plt.Line2D([], [], color="0.3", ls=":", label="random direction (±1/√d)")]
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
        site = f" at {df['site'].iloc[0]}" if "site" in df else ""
        fig.suptitle(f"SAE features most aligned with the steering shift{site}")
    return fig


def _top_features(sub: pd.DataFrame, n: int) -> list[int]:
    """The ``n`` most suppressed then ``n`` most raised features on the source set."""
    src = sub[sub["text_set"] == "source"]
    down = src[src["change"] < 0].nsmallest(n, "change")["feature"].tolist()
    up = src[src["change"] > 0].nlargest(n, "change")["feature"].tolist()
    return down + up[::-1]


def plot_feature_changes(df: pd.DataFrame, n: int = 8,
                         labels: Mapping[int, str] | None = None):
    """The ``n`` features steering suppresses most and the ``n`` it raises most on source
    text (``feature_changes`` / ``SaeOverlap.changes`` frame), with the change of the same
    features on target text next to it; one panel per method."""
    need_columns(df, ["feature", "text_set", "change"], "plot_feature_changes")
    methods = _methods(df)
    fig, axes = figure(1, len(methods), squeeze=False, layout="constrained",
                       size=(5.0 * len(methods) + 1.0, 0.52 * n * 2 + 1.6))
    with plt.rc_context(STYLE):
        for ax, method in zip(axes[0], methods):
            sub = _rows(df, method)
            feats = _top_features(sub, n)
            y = np.arange(len(feats))[::-1]
            for k, (name, color) in enumerate(SETS.items()):
                val = (sub[sub["text_set"] == name].set_index("feature")["change"]
                       .reindex(feats).fillna(0.0))
                ax.barh(y + (0.2 if k == 0 else -0.2), val, height=0.38, color=color,
                        label=f"{name} text")
            n_down = sum(1 for f in feats if _change(sub, f) < 0)
            if 0 < n_down < len(feats):
                ax.axhline(y[n_down - 1] - 0.5, color="0.4", lw=0.8, ls="--")
            ax.axvline(0, color="0.2", lw=0.8)
            ax.set_yticks(y, [_label(f, labels) for f in feats], fontsize=8)
            ax.set_xlabel("change in mean feature activation (steered − unsteered)")
            ax.set_title(method or "steering", loc="left")
            ax.grid(axis="y", visible=False)
        handles = [Patch(color=c, label=f"{name} text") for name, c in SETS.items()]
        fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
        fig.suptitle("SAE features steering suppresses (top) and raises (bottom) on source text")
    return fig


def _change(sub: pd.DataFrame, feature: int) -> float:
    row = sub[(sub["text_set"] == "source") & (sub["feature"] == feature)]
    return float(row["change"].iloc[0])


def plot_feature_overlap(df: pd.DataFrame):
    """Jaccard overlap of the methods' top-k suppressed feature sets (``feature_set_overlap``
    frame) as an annotated heatmap: the Jaccard index and ``shared/k`` in every cell."""
    need_columns(df, ["method_a", "method_b", "jaccard", "n_both"], "plot_feature_overlap")
    names = list(dict.fromkeys([*df["method_a"], *df["method_b"]]))
    grid = df.pivot_table(index="method_a", columns="method_b", values="jaccard",
                          aggfunc="first", dropna=False).reindex(index=names, columns=names)
    both = df.pivot_table(index="method_a", columns="method_b", values="n_both",
                          aggfunc="first").reindex(index=names, columns=names)
    side = 1.1 * len(names) + 2.4
    fig, ax = figure(size=(side + 1.0, side), layout="constrained")
    with plt.rc_context(STYLE):
        image = ax.imshow(grid.to_numpy(float), cmap="viridis", vmin=0.0, vmax=1.0)
        for i in range(len(names)):
            for j in range(len(names)):
                value = grid.iat[i, j]
                text = "n/a" if pd.isna(value) else f"{value:.2f}\n({int(both.iat[i, j])} shared)"
                ax.text(j, i, text, ha="center", va="center", fontsize=9,
                        color="black" if not pd.isna(value) and value > 0.6 else "white")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.grid(False)
        fig.colorbar(image, ax=ax, label="Jaccard index", shrink=0.8)
        k = f"top-{int(df['k'].iloc[0])} " if "k" in df else ""
        ax.set_title(f"Overlap of {k}suppressed SAE features")
    return fig
