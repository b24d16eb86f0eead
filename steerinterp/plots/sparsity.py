"""Figures for LinEAS's γ path (``analysis.sparsity.layer_sparsity`` frames): how the support
shrinks (LinEAS §4.3, Fig. 4) and which layers the group lasso keeps (App. K); and whether the
units LinEAS moves are AurA's experts (``analysis.experts.aura_lineas_overlap`` frames)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import colors
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..analysis.sparsity import SPARSITY_COLUMNS
from .base import STYLE, figure, need_columns, ordered_points

SPARSITY = "layer_sparsity"  # the frame the path plots read

HEADLINE = ("toxic_share", "mean_score", "toxicity", "ppl", "perplexity", "mmlu")
INACTIVE = "#d9d9d9"  # cells / points of sites the group lasso switched off


def _gamma_axis(ax, gammas: np.ndarray) -> None:
    """Log x; γ = 0 (no sparsity) kept on a linear stretch below the smallest positive γ."""
    pos = gammas[gammas > 0]
    if len(pos) and (gammas == 0).any():
        ax.set_xscale("symlog", linthresh=pos.min(), linscale=0.5)
    elif len(pos):
        ax.set_xscale("log")
    ax.set_xlabel("γ (sparse-group-lasso strength)")


def plot_support_path(df: pd.DataFrame):
    """Support (share of units steered) against γ: one panel per point, one line per layer
    (colour = depth), and the unit-weighted support of all the panel's sites (black dashes)."""
    need_columns(df, ["gamma", "layer", "point", "support"], "plot_support_path", SPARSITY)
    points = ordered_points(df)
    fig, axes = figure(1, len(points), size=(4.6 * len(points) + 1.2, 4.0), sharey=True,
                       squeeze=False, layout="constrained")
    cmap, norm = plt.get_cmap("viridis"), colors.Normalize(df["layer"].min(), df["layer"].max())
    gammas = np.sort(df["gamma"].unique())
    with plt.rc_context(STYLE):
        for ax, point in zip(axes[0], points):
            sub = df[df["point"] == point]
            for layer, g in sub.groupby("layer"):
                g = g.sort_values("gamma")
                ax.plot(g["gamma"], g["support"], "o-", ms=3, lw=1.2, color=cmap(norm(layer)))
            weights = sub["n_units"] if "n_units" in sub else pd.Series(1.0, index=sub.index)
            total = (sub.assign(w=weights, ws=weights * sub["support"]).groupby("gamma")
                     [["w", "ws"]].sum())
            ax.plot(total.index, total["ws"] / total["w"], "k--", lw=2,
                    label=f"all {point} units")
            _gamma_axis(ax, gammas)
            ax.set_title(point)
            ax.set_ylim(-0.03, 1.03)
            ax.legend(loc="lower left")
        axes[0, 0].set_ylabel("support (share of units steered)")
        bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(),
                           label="layer")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
        fig.suptitle("LinEAS support along the γ path")
    return fig


def _metric_columns(df: pd.DataFrame, metrics: list[str] | None) -> list[str]:
    """Numeric columns merged from an evaluation: constant within each γ, not ours."""
    if metrics is not None:
        need_columns(df, list(metrics), "plot_surviving_layers", SPARSITY)
        return list(metrics)
    extra = [c for c in df.columns if c not in SPARSITY_COLUMNS
             and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    extra = [c for c in extra if df[c].notna().any()
             and (df.groupby("gamma")[c].nunique(dropna=True) <= 1).all()]
    # An evaluation summary also carries counts and SEs: show the headline metrics if present.
    return [c for c in HEADLINE if c in extra] or extra


def plot_surviving_layers(df: pd.DataFrame, metrics: list[str] | None = None):
    """Layer × γ heatmap of each site's group norm ``‖ω−1‖₂ + ‖b‖₂`` (grey: switched off), one
    panel per point, stacked on a shared γ axis whose labels count the active sites. When the
    frame carries evaluation columns (``metrics``; default: every per-γ numeric column that
    ``layer_sparsity`` merged, restricted to the headline ones such as ``toxic_share``,
    ``mean_score``, ``ppl`` when present), a line panel per metric sits on top, so each γ's
    toxicity / perplexity reads straight above the layers it kept."""
    need_columns(df, ["gamma", "layer", "point", "group_norm"], "plot_surviving_layers",
                 SPARSITY)
    metrics = _metric_columns(df, metrics)
    points, gammas = ordered_points(df), np.sort(df["gamma"].unique())
    layers = np.arange(df["layer"].min(), df["layer"].max() + 1)
    grid_h = max(1.6, 0.17 * len(layers) + 0.5)
    fig, axes = figure(len(metrics) + len(points), 1, sharex=True, squeeze=False,
                       layout="constrained",
                       size=(max(5.5, 0.8 * len(gammas) + 3.0),
                             1.5 * len(metrics) + grid_h * len(points) + 1.2),
                       gridspec_kw={"height_ratios": [1.5] * len(metrics) + [grid_h] * len(points)})
    axes = axes[:, 0]
    with plt.rc_context(STYLE):
        for ax, metric in zip(axes, metrics):
            _metric_panel(ax, df, metric, gammas)
        image = None
        for ax, point in zip(axes[len(metrics):], points):
            image = _norm_panel(ax, df[df["point"] == point], gammas, layers, _norm(df))
            ax.set_ylabel(f"layer\n({point})")
        on = df.assign(on=df["group_norm"] > 0).groupby("gamma")["on"].agg(["sum", "size"])
        axes[-1].set_xticks(range(len(gammas)),
                            [f"{g:.3g}\n{on.loc[g, 'sum']}/{on.loc[g, 'size']}" for g in gammas])
        axes[-1].set_xlabel("γ  (sites on / all)")
        fig.colorbar(image, ax=list(axes[len(metrics):]), label="group norm ‖ω−1‖₂ + ‖b‖₂",
                     shrink=0.9)
        axes[len(metrics)].legend(handles=[Patch(color=INACTIVE, label="off (norm 0)")],
                                  loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False,
                                  borderaxespad=0.1)
        fig.suptitle("Sites the LinEAS group lasso keeps along the γ path")
    return fig


def _norm(df: pd.DataFrame) -> colors.Normalize:
    """Log colours when the kept norms span more than ~20x (they usually do across depth)."""
    positive = df.loc[df["group_norm"] > 0, "group_norm"]
    lo, hi = (positive.min(), positive.max()) if len(positive) else (1e-3, 1.0)
    return colors.LogNorm(lo, hi) if hi > 20 * lo else colors.Normalize(0, hi)


def _norm_panel(ax, sub: pd.DataFrame, gammas: np.ndarray, layers: np.ndarray, norm):
    grid = (sub.pivot_table(index="layer", columns="gamma", values="group_norm", aggfunc="first")
            .reindex(index=layers, columns=gammas).to_numpy(float))
    cmap = plt.get_cmap("viridis").with_extremes(bad=INACTIVE)
    # Masked cells (norm 0, or a layer the point lacks) are drawn in the "bad" grey.
    image = ax.imshow(np.ma.masked_invalid(np.where(grid > 0, grid, np.nan)), cmap=cmap,
                      norm=norm, aspect="auto", origin="lower", interpolation="nearest",
                      extent=(-0.5, len(gammas) - 0.5, layers[0] - 0.5, layers[-1] + 0.5))
    step = 1 if len(layers) <= 12 else 2
    ax.set_yticks(layers[::step], [str(x) for x in layers[::step]])
    ax.grid(False)
    return image


def _metric_panel(ax, df: pd.DataFrame, metric: str, gammas: np.ndarray) -> None:
    values = df.groupby("gamma")[metric].first().reindex(gammas).to_numpy(float)
    ax.plot(range(len(gammas)), values, "o-", color="C3")
    finite = values[np.isfinite(values)]
    if len(finite) and finite.min() > 0 and finite.max() > 20 * finite.min():
        ax.set_yscale("log")  # e.g. perplexity of a broken model next to a healthy one
    for x, v in enumerate(values):
        if np.isfinite(v):
            ax.annotate(f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}", (x, v),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_ylabel(metric)
    ax.margins(x=0.0, y=0.35)
    ax.set_xlim(-0.5, len(gammas) - 0.5)


def plot_aura_lineas_overlap(df: pd.DataFrame):
    """AurA's experts against LinEAS's support (``analysis.experts.aura_lineas_overlap``): per
    site, the units in both sets (bars) next to what two random sets of the same sizes share
    (chance, black ticks) and the most they could share (``min(n_aura, n_lineas)``, pale bars);
    ★ marks an overlap above chance at p < 0.05 (hypergeometric), × a site LinEAS switched off.
    One panel per point, x = layer. ``k`` and ``gamma`` columns, when present, go in the title."""
    need_columns(df, ["layer", "point", "n_aura", "n_lineas", "n_both", "expected_both",
                      "p_value"], "plot_aura_lineas_overlap", "aura_lineas_overlap")
    points = ordered_points(df)
    layers = np.arange(df["layer"].min(), df["layer"].max() + 1)
    fig, axes = figure(len(points), 1, sharex=True, sharey=True, squeeze=False,
                       layout="constrained",
                       size=(max(6.0, 0.38 * len(layers) + 2.5), 2.4 * len(points) + 1.5))
    axes = axes[:, 0]
    most = np.minimum(df["n_aura"], df["n_lineas"])
    top = max(float(np.nanmax(np.maximum(most, df["expected_both"]))), 1.0)
    sets, ylabel = (("top-k sets", "units in both\ntop-k sets") if "k" in df.columns
                    else ("sets", "units in\nboth sets"))
    with plt.rc_context(STYLE):
        for ax, point in zip(axes, points):
            sub = df[df["point"] == point].sort_values("layer")
            x, both = sub["layer"].to_numpy(), sub["n_both"].to_numpy(float)
            off = sub["n_lineas"].to_numpy() == 0
            ax.bar(x, np.minimum(sub["n_aura"], sub["n_lineas"]), width=0.8, color="C0",
                   alpha=0.2, label="most possible: min(n_AurA, n_LinEAS)")
            ax.bar(x, both, width=0.8, color="C0", label=f"units in both {sets}")
            ax.scatter(x[~off], sub["expected_both"].to_numpy(float)[~off], marker="_", s=260,
                       linewidths=2.2, color="k", zorder=3,
                       label="expected by chance (random sets)")
            hit = sub["p_value"].to_numpy(float) < 0.05
            if hit.any():
                ax.scatter(x[hit], both[hit] + 0.06 * top, marker="*", s=70, color="C3",
                           zorder=4, label="p < 0.05 (more than chance)")
            if off.any():
                ax.scatter(x[off], np.zeros(off.sum()), marker="x", s=30, color="0.45",
                           zorder=4, clip_on=False, label="LinEAS off at this site")
            ax.set_title(point, loc="left")
            ax.set_ylabel(ylabel)
            ax.set_ylim(0, 1.18 * top)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(axis="x", visible=False)
        step = 1 if len(layers) <= 12 else 2
        axes[-1].set_xticks(layers[::step], [str(v) for v in layers[::step]])
        axes[-1].set_xlim(layers[0] - 0.6, layers[-1] + 0.6)
        axes[-1].set_xlabel("layer")
        handles = {}
        for ax in axes:  # one legend entry per label, whichever panel drew it
            for h, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, h)
        order = sorted(handles, key=lambda label: (not label.startswith("units"),
                                                   not label.startswith("most")))
        fig.legend([handles[label] for label in order], order, loc="outside lower center",
                   ncols=min(3 if len(layers) > 8 else 2, len(order)), frameon=False)
        fig.suptitle(_overlap_title(df))
    return fig


def _overlap_title(df: pd.DataFrame) -> str:
    """The title, with k and γ on a second line when the frame carries them (one value each)."""
    parts = []
    for col, label in (("k", "top k = {} per side"), ("gamma", "γ = {}")):
        if col in df.columns and df[col].nunique(dropna=True) == 1:
            value = df[col].dropna().iloc[0]
            parts.append(label.format(f"{value:g}" if isinstance(value, float) else value))
    extra = f"\n({', '.join(parts)})" if parts else ""
    return f"AurA's most-dampened units vs LinEAS's most-moved units{extra}"
