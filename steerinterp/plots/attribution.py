"""Figures of where the steering effect lives (``analysis.attribution`` frames): per-site
effects and shares, the top units by gradient × delta, and the causal check that un-steering
the top units removes more effect than un-steering random ones."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .base import STYLE, figure, need_columns, ordered_points

NATS = "nats/token"


def _layer_bars(ax, df: pd.DataFrame, column: str, points: list[str]) -> None:
    """Bars of ``column`` per layer, the points side by side within a layer."""
    width = 0.8 / len(points)
    for j, point in enumerate(points):
        sub = df[df["point"] == point].sort_values("layer")
        x = sub["layer"] + (j - (len(points) - 1) / 2) * width
        ax.bar(x, sub[column], width=width, color=f"C{j}", label=point)
    ax.axhline(0, color="0.3", lw=0.8)
    layers = np.sort(df["layer"].unique())
    step = max(1, math.ceil(len(layers) / 24))  # keep tick labels apart on deep models
    ax.set_xticks(layers[::step])


def _steering(df: pd.DataFrame) -> str:
    """" (mean_shift, λ = 0.156)" when the frame names its steerer and strength."""
    parts = [str(df["method"].iloc[0])] if "method" in df and len(df) else []
    if "strength" in df and len(df):
        parts.append(f"λ = {float(df['strength'].iloc[0]):.3g}")
    return f" ({', '.join(parts)})" if parts else ""


def plot_site_attribution(df: pd.DataFrame):
    """Per layer (x) and point (bars side by side): the effect with only that site steered,
    and the share of the all-sites effect lost without it; a third panel shows the cost on
    neutral text (``cost_only``) when the frame has it."""
    need_columns(df, ["layer", "point", "effect_only", "share_drop", "effect_all"],
          "plot_site_attribution")
    points = ordered_points(df)
    panels = [("effect_only", f"effect, this site only\n({NATS})"),
              ("share_drop", "share of the effect lost\nwithout this site")]
    if "cost_only" in df and df["cost_only"].notna().any():
        panels.append(("cost_only", f"cost on neutral text,\nthis site only ({NATS})"))
    n_layers = df["layer"].nunique()
    fig, axes = figure(len(panels), 1, sharex=True, squeeze=False, layout="constrained",
                       size=(max(6.0, 0.32 * n_layers * max(1, len(points) / 2) + 2.5),
                             2.4 * len(panels) + 0.6))
    with plt.rc_context(STYLE):
        for ax, (column, label) in zip(axes[:, 0], panels):
            _layer_bars(ax, df, column, points)
            ax.set_ylabel(label)
        axes[0, 0].legend(title="point", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        axes[-1, 0].set_xlabel("layer")
        # Single-site effects need not add up to the joint one: sites interact.
        total, alone = float(df["effect_all"].iloc[0]), float(df["effect_only"].sum())
        fig.suptitle(f"Where the steering effect lives, per site{_steering(df)}\n(all sites "
                     f"together: {total:.3g} {NATS}; sum of single-site effects: {alone:.3g})")
    return fig


def _unit_labels(top: pd.DataFrame) -> list[str]:
    return [f"{s} #{int(u)}" for s, u in zip(top["site"], top["unit"])]


def plot_unit_attribution(df: pd.DataFrame, k: int = 30):
    """Left: the ``k`` units with the largest attribution (gradient × delta), rank 1 on top,
    coloured by point, with their attribution on neutral text as markers when present. Right:
    attribution summed over the frame's units per layer and point."""
    need_columns(df, ["site", "layer", "point", "unit", "attribution"], "plot_unit_attribution")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    points = ordered_points(df)
    colour = {p: f"C{j}" for j, p in enumerate(points)}
    top = df.sort_values("attribution", ascending=False, kind="stable").head(k)
    fig, axes = figure(1, 2, squeeze=False, layout="constrained",
                       size=(11.0, max(3.8, 0.2 * len(top) + 1.4)),
                       gridspec_kw={"width_ratios": [1.0, 1.2]})
    with plt.rc_context(STYLE):
        ax = axes[0, 0]
        y = np.arange(len(top))
        ax.barh(y, top["attribution"], color=[colour[p] for p in top["point"]])
        has_neutral = "neutral_attribution" in top and top["neutral_attribution"].notna().any()
        if has_neutral:
            ax.scatter(top["neutral_attribution"], y, marker="x", color="k", s=16, zorder=3,
                       label="on neutral text")
            ax.legend(loc="lower right")
        ax.set_yticks(y, _unit_labels(top), fontsize=7 if len(top) > 40 else 8)
        ax.invert_yaxis()
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_xlabel(f"attribution (gradient × Δ, {NATS})")
        ax.set_title(f"top {len(top)} units")
        per_site = (df.groupby(["layer", "point"], as_index=False)["attribution"].sum())
        _layer_bars(axes[0, 1], per_site, "attribution", points)
        axes[0, 1].set_xlabel("layer")
        axes[0, 1].set_ylabel(f"summed attribution ({NATS})")
        axes[0, 1].set_title(f"summed over the frame's {len(df)} units, per site")
        axes[0, 1].legend(title="point", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.suptitle(f"Which units carry the steering effect{_steering(df)}")
    return fig


def plot_unit_validation(df: pd.DataFrame):
    """Effect that remains after un-steering the top-k attributed units (line) and k random
    units (mean line, min–max band, one dot per draw), against k; dashed: nothing un-steered."""
    need_columns(df, ["k", "selection", "effect_remaining", "effect_all"], "plot_unit_validation")
    fig, axes = figure(1, 1, squeeze=False, layout="constrained", size=(6.4, 4.2))
    ax = axes[0, 0]
    with plt.rc_context(STYLE):
        rnd = df[df["selection"] == "random"]
        if not rnd.empty:
            stats = rnd.groupby("k")["effect_remaining"].agg(["mean", "min", "max"])
            ax.fill_between(stats.index, stats["min"], stats["max"], color="C7", alpha=0.25,
                            lw=0)
            ax.scatter(rnd["k"], rnd["effect_remaining"], color="C7", s=10, alpha=0.7)
            ax.plot(stats.index, stats["mean"], "o-", color="C7", label="random units (mean)")
        top = df[df["selection"] == "top"].sort_values("k")
        ax.plot(top["k"], top["effect_remaining"], "o-", color="C3", label="top units")
        ax.axhline(float(df["effect_all"].iloc[0]), color="k", ls="--", lw=1,
                   label="nothing un-steered")
        ax.axhline(0, color="0.3", lw=0.8)
        ks = np.sort(df["k"].unique())
        if ks.min() > 0 and ks.max() / ks.min() >= 10:
            ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])  # the k values asked for, not powers of 10
        ax.minorticks_off()
        ax.set_xlabel("units un-steered (k)")
        ax.set_ylabel(f"effect remaining ({NATS})")
        ax.legend(loc="best")
        ax.set_title("Un-steering the top-attributed units vs random units"
                     + (f"\n{_steering(df).strip()}" if _steering(df) else ""))
    return fig
