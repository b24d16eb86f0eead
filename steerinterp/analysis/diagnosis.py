"""Where a steerer's perplexity cost comes from, site by site (issue 11, item 2).

**PPL.** :func:`~steerinterp.evaluate.perplexity.perplexity` on ``ppl_texts`` summarised as
the mean of per-text PPL (the AcT number, :func:`summarize_perplexity`), with the steerer
restricted (:class:`~steerinterp.steer.restricted.Restricted`) to one site (``only``), to
every site but one (``without``), to all sites, and unsteered (computed once). Exact: no
linearisation; ``only`` and ``without`` disagree when sites interact.

**W2** (only with ``source_texts`` and ``target_texts``): at every site of the steerer, the
per-unit squared 1-D Wasserstein-2 distance (:func:`~steerinterp.metrics.w2_sorted`) between
pooled source and pooled target activations, **averaged over the site's units** (so sites of
different widths compare), without steering (``w2_before``) and with the steerer active
(``w2_after``). Pooling, token cap and skipped first token are the steerer's own
(``steerer.pool``, ``config.max_tokens``, as in ``fit``). The steered source activations are
collected inside ``steered()``: they include the steering at earlier sites and the map at the
site itself. The target is always collected unsteered (it is the reference distribution).
``w2_sorted`` needs equal counts: both sides are truncated to their first ``n_w2`` rows (texts,
or tokens for per-token pooling), ``n_w2 = min(n_source, n_target)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..collection import collect
from ..evaluate.perplexity import perplexity, summarize_perplexity
from ..metrics import w2_sorted
from ..sites import Site
from ..steer.apply import steered
from ..steer.base import Steerer
from ..steer.restricted import Restricted

__all__ = ["DIAGNOSIS_COLUMNS", "diagnose"]

DIAGNOSIS_COLUMNS = ["site", "layer", "point", "method", "strength", "ppl_unsteered", "ppl_all",
                     "ppl_only", "ppl_without", "cost_all", "cost_only", "cost_without",
                     "share_drop", "w2_before", "w2_after", "n_w2"]


def diagnose(model: HookedTransformer, steerer: Steerer, ppl_texts: Sequence[str],
             source_texts: Sequence[str] | None = None,
             target_texts: Sequence[str] | None = None, strength: float | None = 1.0,
             max_tokens: int = 64, batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """Per-site perplexity cost of ``steerer`` at ``strength`` (None: its configured λ), and,
    with source and target texts, how far each site's activations are from the target
    (module doc). 2·n_sites + 2 perplexity passes over ``ppl_texts`` (fewer for one site).

    One row per site of the steerer, in its (forward) order. Columns:
    ``site``, ``layer``, ``point``; ``method``, ``strength`` (the λ used);
    ``ppl_unsteered``, ``ppl_all`` (every site steered), ``ppl_only`` (only this site),
    ``ppl_without`` (every site but this one): mean per-text PPL on ``ppl_texts``, each cut to
    ``max_tokens`` tokens;
    ``cost_all``, ``cost_only``, ``cost_without``: relative increases, ``ppl_x / ppl_unsteered
    − 1`` (1.0 = PPL doubled);
    ``share_drop``: the share of the all-sites cost that disappears without this site, on the
    log-PPL scale, ``log(ppl_all / ppl_without) / log(ppl_all / ppl_unsteered)`` (NaN when
    ``ppl_all == ppl_unsteered``). Log scale because log PPL is (up to the per-text averaging)
    the NLL in nats/token, where non-interacting sites' costs add, as in ``attribute``; on the
    ratio scale a 30× total would make any site look essential;
    ``w2_before``, ``w2_after``: W2² per unit averaged over the site's units, unsteered and
    steered source vs unsteered target, and ``n_w2`` (rows compared per side after truncating
    to equal counts); NaN / 0 without source and target texts.
    """
    lam = _check(model, steerer, source_texts, target_texts, strength)
    ppl_texts = _texts(ppl_texts, "ppl_texts")
    # W2 first: three cheap collections, so bad source/target texts fail before the PPL passes.
    w2 = (_w2_by_site(model, steerer, source_texts, target_texts, lam, batch_size)
          if source_texts is not None else {})

    def ppl(*views: Steerer) -> float:
        df = perplexity(model, ppl_texts, *views, strength=lam, max_tokens=max_tokens,
                        batch_size=batch_size, progress=False)
        return summarize_perplexity(df)["ppl"]

    sites = steerer.sites
    base, full = ppl(), ppl(steerer)
    rows = []
    for site in tqdm(sites, desc="diagnosis", disable=not progress):
        rest = [s for s in sites if s != site]
        only = full if not rest else ppl(Restricted(steerer, [site]))
        # With nothing left to steer the view is the unsteered model: no pass needed.
        without = ppl(Restricted(steerer, rest)) if rest else base
        before, after, n = w2.get(site, (math.nan, math.nan, 0))
        rows.append({"site": str(site), "layer": site.layer, "point": site.point,
                     "method": steerer.method, "strength": lam, "ppl_unsteered": base,
                     "ppl_all": full, "ppl_only": only, "ppl_without": without,
                     "w2_before": before, "w2_after": after, "n_w2": n})
    df = pd.DataFrame(rows)
    for kind in ("all", "only", "without"):
        df[f"cost_{kind}"] = df[f"ppl_{kind}"] / df["ppl_unsteered"] - 1
    total = np.log(df["ppl_all"] / df["ppl_unsteered"])
    df["share_drop"] = np.log(df["ppl_all"] / df["ppl_without"]) / total.where(total != 0)
    return df[DIAGNOSIS_COLUMNS]


def _check(model: HookedTransformer, steerer: Steerer, source_texts, target_texts,
           strength: float | None) -> float:
    """The λ to use, after refusing a wrong steerer, strength or half a W2 text pair."""
    if not isinstance(steerer, Steerer):
        raise TypeError(f"diagnose needs a fitted Steerer, got {type(steerer).__name__}")
    steerer.check_model(model)  # names an unfitted steerer or another model
    if not steerer.sites:
        raise ValueError(f"the {steerer.method} steerer steers no site: nothing to diagnose")
    if (source_texts is None) != (target_texts is None):
        given = "source_texts" if target_texts is None else "target_texts"
        raise ValueError(f"{given} given alone: the W2 diagnosis needs both source_texts and "
                         "target_texts (or neither, for perplexity only)")
    if source_texts is not None:
        _texts(source_texts, "source_texts")
        _texts(target_texts, "target_texts")
    return steerer.check_strength(steerer.config.strength if strength is None else strength)


def _texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{what} must be a list of strings, not a single string")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: diagnose needs at least one text there")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{what} at positions {bad[:5]} are not strings")
    return texts


def _w2_by_site(model: HookedTransformer, steerer: Steerer, source_texts, target_texts,
                lam: float, batch_size: int) -> dict[Site, tuple[float, float, int]]:
    """Per site: (W2 unsteered, W2 steered, rows compared), W2 averaged over units."""
    kw = dict(sites=steerer.sites, pool=steerer.pool, max_tokens=steerer.config.max_tokens,
              batch_size=batch_size, progress=False)
    target = collect(model, list(target_texts), **kw)
    before = collect(model, list(source_texts), **kw)
    # Recording hooks are added after the steering ones, so they see each site's output.
    with steered(model, steerer, strength=lam):
        after = collect(model, list(source_texts), **kw)
    out = {}
    for site in steerer.sites:
        tgt = target[site]
        n = min(before[site].shape[0], tgt.shape[0])  # w2_sorted needs equal counts
        out[site] = (_mean_w2(before[site][:n], tgt[:n]), _mean_w2(after[site][:n], tgt[:n]), n)
    return out


def _mean_w2(u: Float[torch.Tensor, "n d"], v: Float[torch.Tensor, "n d"]) -> float:
    return float(w2_sorted(u.double(), v.double()).mean())
