"""Figures of DSAS's per-token gates (``analysis.token_scales`` frames): which tokens of a text
trigger steering at which layer, and how much more the gates open on the source concept than
on neutral text (DSAS, arXiv 2512.03661; METHODS.md §6)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
import pandas as pd
import torch

from ..sites import Site
from .base import STYLE, figure, need_columns, ordered_points

OFF = "#bdbdbd"  # sites whose gate is off (inactive probe)


def _ids(df: pd.DataFrame, text_id) -> list[int]:
    ids = [text_id] if np.isscalar(text_id) else list(text_id)
    have = set(df["text_id"])
    missing = [i for i in ids if i not in have]
    if not ids or missing:
        raise ValueError(f"text_id {missing or ids} not in the frame; it has text_ids "
                         f"{sorted(have)[:20]}")
    return ids


def readable(token: str) -> str:
    """A token as an axis label: whitespace made visible, long tokens cut."""
    out = token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·")
    return out if len(out) <= 14 else out[:13] + "…"


def _sites(df: pd.DataFrame) -> list[str]:
    return [str(s) for s in sorted(Site.parse(x) for x in df["site"].unique())]


def _preview(sub: pd.DataFrame, width: int = 80) -> str:
    """The text rebuilt from its tokens (a leading special token such as <bos> dropped)."""
    tokens = list(sub.drop_duplicates("position").sort_values("position")["token"])
    if tokens and tokens[0].startswith("<") and tokens[0].endswith(">"):
        tokens = tokens[1:]
    text = "".join(tokens).replace("\n", " ").strip()
    return repr(text if len(text) <= width else text[:width - 1] + "…")


def _grid(sub: pd.DataFrame, sites: list[str]) -> tuple[np.ndarray, list[str]]:
    """``[site, position]`` scales of one text and its tokens in position order."""
    grid = sub.pivot_table(index="site", columns="position", values="scale", aggfunc="first")
    grid = grid.reindex(index=sites)
    tokens = sub.drop_duplicates("position").set_index("position")["token"].reindex(grid.columns)
    return grid.to_numpy(float, copy=True), [readable(t) for t in tokens]


def plot_token_heatmap(df: pd.DataFrame, text_id: int | list[int]):
    """Gate ``s`` per token (x, labelled with the tokens) and site (y, forward order) for one or
    several texts of a :func:`~steerinterp.analysis.token_scales.token_scales` frame, one panel
    per text; colours fixed to [0, 1] so panels compare. A site whose gate is exactly 0 on
    every token (an inactive probe: a sigmoid gate is never exactly 0) is drawn grey."""
    need_columns(df, ["text_id", "position", "token", "site", "scale"], "plot_token_heatmap")
    ids, sites = _ids(df, text_id), _sites(df)
    n_pos = max(df.loc[df["text_id"] == i, "position"].nunique() for i in ids)
    row_h = 0.17 * len(sites) + 1.3
    width = min(28.0, max(6.0, 0.24 * n_pos + 3.0))
    fig, axes = figure(len(ids), 1, squeeze=False, layout="constrained",
                       size=(width, row_h * len(ids) + 0.6))
    chars = int(7 * width)  # title characters at 9 pt that fit over the panel
    cmap = plt.get_cmap("magma").with_extremes(bad=OFF)
    off = df.groupby("site")["scale"].apply(lambda v: bool((v == 0).all()))
    labels = [f"{s} (off)" if off[s] else s for s in sites]
    layers = [Site.parse(s).layer for s in sites]
    with plt.rc_context(STYLE):
        for ax, i in zip(axes[:, 0], ids):
            grid, tokens = _grid(df[df["text_id"] == i], sites)
            grid[off.reindex(sites).to_numpy(bool)] = np.nan
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0,
                              aspect="auto", interpolation="nearest")
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
            ax.set_yticks(range(len(sites)), labels, fontsize=7 if len(sites) > 16 else 8)
            for k in np.flatnonzero(np.diff(layers)):  # a white rule between layers
                ax.axhline(k + 0.5, color="white", lw=0.6)
            ax.grid(False)
            ax.set_title(f"text {i}: {_preview(df[df['text_id'] == i], chars)}", loc="left",
                         fontsize=9)
        fig.colorbar(image, ax=axes[:, 0].tolist(), label="DSAS gate s (0: off, 1: full)",
                     shrink=1.0 if len(ids) == 1 else 0.6)
        fig.suptitle("Which tokens open the DSAS gates")
    return fig


def plot_scale_by_site(df: pd.DataFrame):
    """Mean gate per layer for each text group (``mean_scale_by_site`` frame), ±1 standard
    error over texts, one panel per point; open markers: sites whose probe is inactive."""
    need_columns(df, ["group", "layer", "point", "mean_scale", "se"], "plot_scale_by_site")
    points = ordered_points(df)
    groups = list(dict.fromkeys(df["group"]))
    fig, axes = figure(1, len(points), sharey=True, squeeze=False, layout="constrained",
                       size=(max(4.5, 0.2 * df["layer"].nunique() + 2.2) * len(points) + 1.5, 3.8))
    width = 0.5 / max(len(groups), 1)  # groups side by side within a layer, not on top
    with plt.rc_context(STYLE):
        for ax, point in zip(axes[0], points):
            for k, group in enumerate(groups):
                sub = df[(df["point"] == point) & (df["group"] == group)].sort_values("layer")
                x = sub["layer"] + (k - (len(groups) - 1) / 2) * width
                color = f"C{k}"
                ax.errorbar(x, sub["mean_scale"], yerr=sub["se"].fillna(0), fmt="-", lw=1,
                            color=color, capsize=2, label=group)
                active = sub["active"] if "active" in sub else pd.Series(True, index=sub.index)
                ax.scatter(x[active], sub["mean_scale"][active], color=color, s=18, zorder=3)
                ax.scatter(x[~active], sub["mean_scale"][~active], facecolor="white",
                           edgecolor=color, s=18, zorder=3)
            ax.set_title(point)
            ax.set_xlabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(-0.03, 1.03)
        axes[0, 0].set_ylabel("mean DSAS gate s (± s.e.)")
        axes[0, -1].legend(title="text group", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.suptitle("Where the DSAS gates open, by text group (open markers: inactive probe)")
    return fig


def token_scales_html(df: pd.DataFrame, text_id: int, site: str | None = None):
    """A circuitsvis view of one text's tokens coloured by their gate: at ``site``
    (``colored_tokens``, colours on [0, 1]), or at every site with a selector
    (``colored_tokens_multi``, hover a token for all its values). For notebooks."""
    from circuitsvis.tokens import colored_tokens, colored_tokens_multi

    need_columns(df, ["text_id", "position", "token", "site", "scale"], "token_scales_html")
    _ids(df, text_id)
    sub = df[df["text_id"] == text_id]
    sites = _sites(sub)
    grid, _ = _grid(sub, sites)
    tokens = list(sub.drop_duplicates("position").sort_values("position")["token"])
    if site is None:
        return colored_tokens_multi(tokens, torch.tensor(grid.T), labels=sites)
    if str(site) not in sites:
        raise ValueError(f"site {site} is not in the frame; it has {', '.join(sites)}")
    return colored_tokens(tokens, grid[sites.index(str(site))].tolist(), min_value=0.0,
                          max_value=1.0)

