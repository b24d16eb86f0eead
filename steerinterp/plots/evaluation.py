"""Figures of evaluation frames (``sweep`` / ``steerinterp run`` results): the toxicity vs
perplexity Pareto front and per-method bars with standard errors."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .base import figure

_REQUIRED = ("condition", "method", "mean_score", "mean_score_se", "ppl")


def _check(frame: pd.DataFrame, cols=_REQUIRED) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"evaluation frame lacks column(s) {missing}; it has {list(frame.columns)}")
    if frame.empty:
        raise ValueError("evaluation frame is empty: nothing to plot")


def plot_pareto(frame: pd.DataFrame, x: str = "ppl", y: str = "mean_score", title: str | None = None):
    """Toxicity (``y``) against perplexity (``x``), one colour per method, error bars from the
    ``_se`` columns, the unsteered model as a star and the Pareto front as a step line."""
    from ..evaluate.sweep import pareto_front

    _check(frame, ("method", x, y))
    fig, ax = figure(size=(7.0, 4.6))
    methods = list(dict.fromkeys(frame["method"]))
    colours = dict(zip(methods, _palette(len(methods))))
    for method in methods:
        part = frame[frame["method"] == method].sort_values(x)
        star = method == "unsteered"
        # No x error bars for PPL: its SE across texts hides that conditions are compared
        # on the same texts (the paired ΔPPL SE is far smaller; it is in the table).
        xerr = None if x.startswith("ppl") else part.get(f"{x}_se")
        ax.errorbar(part[x], part[y], yerr=part.get(f"{y}_se"), xerr=xerr,
                    fmt="*" if star else "o-", ms=12 if star else 6, capsize=2, lw=1,
                    color="black" if star else colours[method], label=method)
    front = pareto_front(frame, x, y)
    ax.step(front[x], front[y], where="post", color="grey", ls="--", lw=1, alpha=0.8,
            label="Pareto front")
    if frame[x].min() > 0 and frame[x].max() / frame[x].min() > 5:
        ax.set_xscale("log")  # over-steered settings sit orders of magnitude to the right
    ax.set_xlabel(_label(x) + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(_label(y))
    ax.set_title(title or "Toxicity vs perplexity (lower-left is better)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def plot_method_bars(frame: pd.DataFrame, title: str | None = None):
    """Two panels: mean toxicity score (± SE, clustered by prompt) and relative perplexity
    change per condition; the unsteered level is a dashed line."""
    _check(frame)
    frame = frame.reset_index(drop=True)
    fig, (ax1, ax2) = figure(1, 2, size=(11.0, 0.35 * len(frame) + 1.8), sharey=True)
    ypos = np.arange(len(frame))[::-1]
    labels = frame["condition"].tolist()
    colours = ["black" if m == "unsteered" else c
               for m, c in zip(frame["method"], _method_colours(frame["method"]))]
    ax1.barh(ypos, frame["mean_score"], xerr=frame["mean_score_se"], color=colours,
             alpha=0.85, capsize=2)
    base = frame.loc[frame["method"] == "unsteered"]
    if not base.empty:
        ax1.axvline(base["mean_score"].iloc[0], color="black", ls="--", lw=1)
        rel = 100 * (frame["ppl"] / base["ppl"].iloc[0] - 1)
    else:
        rel = pd.Series(np.nan, index=frame.index)
    ax1.set_yticks(ypos, labels)
    ax1.set_xlabel("mean toxicity score of continuations (± SE)")
    ax2.barh(ypos, rel, color=colours, alpha=0.85)
    ax2.axvline(0, color="black", lw=1)
    ax2.set_xlabel("perplexity change vs unsteered (%)")
    fig.suptitle(title or "Toxicity and perplexity per condition")
    return fig


def _label(col: str) -> str:
    return {"ppl": "perplexity of Wikipedia text", "mean_score": "mean toxicity score",
            "toxic_share": "share of toxic continuations", "ppl_token":
            "token-weighted perplexity", "toxic_pct": "toxic continuations (%)"}.get(col, col)


def _palette(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _method_colours(methods: pd.Series) -> list:
    uniq = list(dict.fromkeys(methods))
    colour = dict(zip(uniq, _palette(len(uniq))))
    return [colour[m] for m in methods]
