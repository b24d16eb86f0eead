"""Figures of the expertise analyses (``steerinterp.analysis.auroc_map`` / ``experts``), each
drawn only from the tidy frame the analysis returns.

* :func:`plot_auroc_map` — layer × unit image of AUROCs, units sorted within each layer.
* :func:`plot_auroc_distribution` — per-layer AUROC quantile bands.
* :func:`plot_expert_overlap` — Jaccard heatmap of concept expert sets (ExpertLens).
* :func:`plot_expert_tokens` — table of each expert's strongest tokens in context.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .base import STYLE, figure, need_columns


def _text(s: str) -> str:
    """Escape ``$`` so matplotlib does not read token text as mathtext."""
    return str(s).replace("$", r"\$")


def _sets_label(df: pd.DataFrame) -> str:
    a = df.attrs
    if "n_pos" in a:
        pool = f", {a['pool']}-pooled" if a.get("pool") else ""
        return f" ({a['n_pos']} positive vs {a['n_neg']} negative texts{pool})"
    return ""


# -- AUROC map --------------------------------------------------------------------------------
def _sorted_image(part: pd.DataFrame, layers: Sequence[int], width: int) -> np.ndarray:
    """Rows = layers, columns = units sorted by AUROC (high → low); NaN pads narrow layers."""
    img = np.full((len(layers), width), np.nan)
    for i, layer in enumerate(layers):
        v = np.sort(part.loc[part["layer"] == layer, "auroc"].to_numpy())[::-1]
        img[i, :len(v)] = v
    return img


def plot_auroc_map(df: pd.DataFrame):
    """Layer × unit image of a :func:`~steerinterp.analysis.neuron_auroc` frame, one panel per
    point; units sorted by AUROC within each layer, colours diverging around chance (0.5)."""
    need_columns(df, ["layer", "point", "unit", "auroc"], "plot_auroc_map")
    points = list(dict.fromkeys(df["point"]))
    layers = sorted(df["layer"].unique())
    span = max(float(np.nanmax(np.abs(df["auroc"].to_numpy() - 0.5))), 0.05)
    with plt.rc_context(STYLE):
        fig, axes = figure(1, len(points), size=(4.6 * len(points) + 1.2, 1.2 + 0.22 * len(layers)
                                                 + 1.6), squeeze=False, sharey=True,
                           layout="constrained")
        for ax, point in zip(axes[0], points):
            part = df[df["point"] == point]
            img = _sorted_image(part, [int(x) for x in layers],
                                int(part.groupby("layer").size().max()))
            im = ax.imshow(img, aspect="auto", cmap="RdBu_r", vmin=0.5 - span, vmax=0.5 + span,
                           interpolation="nearest",
                           extent=(0.5, img.shape[1] + 0.5, len(layers) - 0.5, -0.5))
            ax.set_title(point)
            ax.set_xlabel("unit rank within layer (by AUROC, high → low)")
            ax.grid(False)
        axes[0, 0].set_ylabel("layer")
        step = max(1, len(layers) // 12)
        ticks = range(0, len(layers), step)
        axes[0, 0].set_yticks(ticks, [layers[i] for i in ticks])
        cbar = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.9)
        cbar.set_label("AUROC, positive vs negative (0.5 = chance)")
        fig.suptitle("Unit AUROC per layer" + _sets_label(df))
    return fig


# -- distribution -----------------------------------------------------------------------------
_BANDS = ((0.0, 1.0, 0.12, "min–max"), (0.05, 0.95, 0.25, "5–95%"),
          (0.25, 0.75, 0.45, "25–75%"))


def auroc_quantiles(df: pd.DataFrame) -> pd.DataFrame:
    """The per-layer quantiles :func:`plot_auroc_distribution` draws, tidy: ``point``,
    ``layer``, ``quantile``, ``auroc`` (a small frame to save next to the figure)."""
    need_columns(df, ["layer", "point", "auroc"], "auroc_quantiles")
    qs = sorted({q for lo, hi, _, _ in _BANDS for q in (lo, hi)} | {0.5})
    out = df.groupby(["point", "layer"], sort=False)["auroc"].quantile(qs)
    out = out.rename_axis(["point", "layer", "quantile"]).reset_index()
    out.attrs = dict(df.attrs)
    return out


def plot_auroc_distribution(df: pd.DataFrame):
    """Per-layer AUROC distribution of a :func:`~steerinterp.analysis.neuron_auroc` frame (or
    of its :func:`auroc_quantiles`) as quantile bands (one panel per point), chance marked."""
    quantiles = df if "quantile" in df.columns else auroc_quantiles(df)
    need_columns(quantiles, ["layer", "point", "quantile", "auroc"], "plot_auroc_distribution")
    points = list(dict.fromkeys(quantiles["point"]))
    stats = quantiles.pivot_table(index=["point", "layer"], columns="quantile", values="auroc")
    with plt.rc_context(STYLE):
        fig, axes = figure(1, len(points), size=(4.6 * len(points), 3.8), squeeze=False,
                           sharey=True, layout="constrained")
        for ax, point in zip(axes[0], points):
            s = stats.loc[point]
            x = s.index.to_numpy()
            for lo, hi, alpha, label in _BANDS:
                ax.fill_between(x, s[lo], s[hi], color="C0", alpha=alpha, lw=0, label=label)
            ax.plot(x, s[0.5], color="C0", lw=1.5, marker="o", ms=3, label="median")
            ax.axhline(0.5, color="0.3", ls="--", lw=1, label="chance (0.5)")
            ax.set_title(point)
            ax.set_xlabel("layer")
            ax.set_ylim(0, 1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0, 0].set_ylabel("AUROC, positive vs negative")
        # Outside the panels: inside, it would hide the low tail of some layer.
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right center",
                   title="units per layer")
        fig.suptitle("Distribution of unit AUROCs per layer" + _sets_label(df))
    return fig


# -- expert overlap ---------------------------------------------------------------------------
def _overlap_matrix(df: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """Symmetric Jaccard and shared-count matrices (also from a frame holding each pair once)
    and the set sizes; counts are NaN when the frame has no ``n_both``."""
    both = pd.concat([df, df.rename(columns={"concept_a": "concept_b", "concept_b": "concept_a",
                                             "n_a": "n_b", "n_b": "n_a"})])
    both = both.drop_duplicates(["concept_a", "concept_b"])
    concepts = list(dict.fromkeys([*df["concept_a"], *df["concept_b"]]))

    def matrix(col):
        if col not in both:
            return np.full((len(concepts), len(concepts)), np.nan)
        m = both.pivot(index="concept_a", columns="concept_b", values=col)
        return m.reindex(concepts, columns=concepts).to_numpy(dtype=float)

    sizes = dict(zip(both["concept_a"], both["n_a"])) if "n_a" in both else {}
    return concepts, matrix("jaccard"), matrix("n_both"), sizes


def plot_expert_overlap(overlap_df: pd.DataFrame):
    """Heatmap of :func:`~steerinterp.analysis.expert_overlap` Jaccard overlaps, cells
    annotated with the value and the shared count; the diagonal (1 by definition) shows each
    set's size instead, and the colour scale spans the off-diagonal values."""
    need_columns(overlap_df, ["concept_a", "concept_b", "jaccard"], "plot_expert_overlap")
    concepts, m, shared, sizes = _overlap_matrix(overlap_df)
    k = len(concepts)
    off = m.copy()
    np.fill_diagonal(off, np.nan)
    top = np.nanmax(off) if np.isfinite(off).any() else 1.0
    with plt.rc_context(STYLE):
        fig, ax = figure(size=(1.6 + 1.2 * k, 1.0 + 0.95 * k), layout="constrained")
        im = ax.imshow(off, cmap="viridis", vmin=0, vmax=max(top, 1e-3))
        for i in range(k):
            for j in range(k):
                label = (f"{sizes.get(concepts[i], '?')} experts" if i == j
                         else _cell_label(m[i, j], shared[i, j]))
                _annotate(ax, i, j, label, m[i, j], im, diagonal=i == j)
        ax.set_xticks(range(k), [_text(c) for c in concepts], rotation=30, ha="right")
        ax.set_yticks(range(k), [_text(c) for c in concepts])
        ax.set_xlabel("concept")
        ax.set_ylabel("concept")
        ax.grid(False)
        cbar = fig.colorbar(im, ax=ax, shrink=0.9)
        cbar.set_label("Jaccard overlap of expert sets")
        a = overlap_df.attrs
        extra = f" ({a['metric'].upper()} ≥ {a['tau']:g})" if "tau" in a else ""
        ax.set_title("Expert-set overlap between concepts" + extra)
    return fig


def _cell_label(value: float, shared: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.2f}" + (f"\n{int(shared)} shared" if np.isfinite(shared) else "")


def _annotate(ax, i: int, j: int, label: str, value: float, im, diagonal: bool) -> None:
    """Write ``label`` in cell (i, j), in a colour readable on the cell's background."""
    if diagonal:
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.9"))
        color = "0.2"
    elif not np.isfinite(value):
        color = "0.4"
    else:
        r, g, b, _ = im.cmap(im.norm(value))
        color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
    ax.text(j, i, label, ha="center", va="center", fontsize=8, color=color)


# -- expert tokens ----------------------------------------------------------------------------
def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n - 1] + "…"


def _centred(context: str, n: int) -> str:
    """Cut ``context`` to ``n`` characters around the «marked» token."""
    if len(context) <= n:
        return context
    mid = context.find("«")
    start = max(0, min(mid - n // 2, len(context) - n))
    tail = "…" if start + n < len(context) else ""
    return ("…" if start else "") + context[start:start + n] + tail


def plot_expert_tokens(tokens_df: pd.DataFrame, max_context: int = 60):
    """Table of :func:`~steerinterp.analysis.expert_tokens`: one row per expert with its
    strongest tokens (activation) and the context of the strongest hit."""
    need_columns(tokens_df, ["site", "unit", "token", "context", "activation"],
                 "plot_expert_tokens")
    keys = ["rank", "activation"] if "rank" in tokens_df else ["activation"]
    df = tokens_df.sort_values(keys, ascending=[True, False][-len(keys):], kind="stable")
    rows = [_token_row(site, unit, g, max_context)
            for (site, unit), g in df.groupby(["site", "unit"], sort=False)]
    labels = ["rank", "expert (site:unit)", "AUROC", "top tokens (activation)",
              "strongest context («token»)"]
    with plt.rc_context(STYLE):
        fig, ax = figure(size=(15, 0.7 + 0.27 * (len(rows) + 1)), layout="constrained")
        ax.axis("off")
        widths = [0.04, 0.13, 0.06, 0.40, 0.37]
        table = ax.table(cellText=rows, colLabels=labels, colWidths=widths, cellLoc="left",
                         bbox=(0, 0, 1, 1))
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        for (r, c), cell in table.get_celld().items():
            # PAD is a share of the cell's width: the same absolute inset in every column.
            cell.PAD = 0.005 / widths[c]
            cell.set_edgecolor("0.8")
            if r == 0:
                cell.set_text_props(weight="bold")
                cell.set_facecolor("0.93")
        ax.set_title("Top experts and the tokens where they fire most")
    return fig


def _token_row(site: str, unit: int, g: pd.DataFrame, max_context: int) -> list[str]:
    toks = ", ".join(f"«{_clip(t.strip() or t, 14)}» {a:.3g}"
                     for t, a in zip(g["token"], g["activation"]))
    auc = g["auroc"].iloc[0] if "auroc" in g else np.nan
    return [str(g["rank"].iloc[0]) if "rank" in g else "", f"{site}:{unit}",
            "" if pd.isna(auc) else f"{auc:.3f}", _text(_clip(toks, 90)),
            _text(_centred(g["context"].iloc[0], max_context))]
