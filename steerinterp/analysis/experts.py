"""Expert sets and their overlaps: the ExpertLens view of steering units.

* :func:`expert_sets` / :func:`select_experts` — per concept, the units whose max-pooled
  response detects the concept with AP (or AUROC) ≥ τ ("finding experts", Suau et al.; used by
  ExpertLens, Fedzechkina et al. 2025; METHODS.md §7).
* :func:`expert_overlap` — Jaccard overlap of the expert sets of every concept pair (ExpertLens
  compares these with human similarity judgements).
* :func:`aura_lineas_overlap` — do AurA's most-dampened units (Suau et al. 2024) coincide with
  the units LinEAS moves (Rodriguez et al. 2025)? Counted per site against the hypergeometric
  expectation of two independent random sets of the same sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from ..data import load_texts
from ..provenance import same_model
from ..steer.base import Steerer
from .auroc_map import AnalysisError, _require, neuron_auroc

DEFAULT_CONCEPTS = ("toxic", "news", "reviews")  # built-in sets, each against wiki_target
SET_COLUMNS = ["concept", "site", "layer", "point", "unit", "auroc", "ap"]
OVERLAP_COLUMNS = ["concept_a", "concept_b", "n_a", "n_b", "n_both", "jaccard"]
AURA_LINEAS_COLUMNS = ["site", "layer", "point", "width", "n_aura", "n_lineas", "n_both",
                       "jaccard", "expected_both", "p_value"]


# -- expert sets ------------------------------------------------------------------------------
def expert_sets(model: HookedTransformer, concepts: dict | None = None, negative_texts=None,
                sites=None, tau: float = 0.9, metric: str = "ap", n_texts: int = 64,
                pool: str = "max", max_tokens: int = 64, batch_size: int = 16,
                length_match: bool = True, progress: bool = True) -> pd.DataFrame:
    """Experts of each concept: units with ``metric`` ≥ ``tau`` for the concept's texts
    (positive) against ``negative_texts`` (METHODS.md §7).

    ``concepts`` maps a name to texts, an :class:`ActivationStore`, or a built-in set name (then
    ``n_texts`` texts are loaded); ``None`` means the built-in ``toxic``, ``news`` and
    ``reviews``. ``negative_texts=None`` means ``n_texts`` built-in ``wiki_target`` texts.
    ExpertLens ranks by average precision (``metric="ap"``) and sweeps τ from 0.5 to 0.9; with
    equally many positives and negatives chance AP is 0.5, so the default τ = 0.9 keeps only
    clear detectors. Other arguments as in :func:`neuron_auroc`.

    Returns one row per concept × expert: ``concept``, ``site``, ``layer``, ``point``,
    ``unit``, ``auroc``, ``ap``. ``df.attrs``: ``concepts`` (all names, also those without
    experts), ``tau``, ``metric``, ``n_units`` (units scored per concept).
    """
    _check_threshold(tau, metric)
    concepts = _default_concepts(concepts)
    negative = load_texts("wiki_target", n_texts) if negative_texts is None else negative_texts
    scores = {name: neuron_auroc(model, _texts(texts, n_texts), _texts(negative, n_texts),
                                 sites=sites, pool=pool, max_tokens=max_tokens,
                                 batch_size=batch_size, length_match=length_match,
                                 progress=progress)
              for name, texts in concepts.items()}
    return select_experts(scores, tau, metric)


def select_experts(scores: dict[str, pd.DataFrame], tau: float = 0.9,
                   metric: str = "ap") -> pd.DataFrame:
    """Threshold :func:`neuron_auroc` frames, one per concept, into the tidy expert-set frame
    described in :func:`expert_sets` (a unit is an expert when ``metric`` ≥ ``tau``)."""
    _check_threshold(tau, metric)
    if not isinstance(scores, dict) or not scores:
        raise AnalysisError("select_experts needs a non-empty dict {concept: neuron_auroc frame}")
    parts = []
    for name, df in scores.items():
        _require(df, ["site", "layer", "point", "unit", "auroc", "ap"], f"concept {name!r}")
        part = df.loc[df[metric] >= tau, SET_COLUMNS[1:]]
        parts.append(part.assign(concept=str(name))[SET_COLUMNS])
    out = pd.concat(parts, ignore_index=True)
    # Replaced, not updated: concat copies one concept's n_pos/n_neg, true of that one only.
    out.attrs = {"concepts": [str(c) for c in scores], "tau": float(tau), "metric": metric,
                 "n_units": int(max(len(df) for df in scores.values()))}
    return out


def _check_threshold(tau, metric: str) -> None:
    if metric not in ("auroc", "ap"):
        raise AnalysisError(f"metric must be 'auroc' or 'ap', got {metric!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= tau <= 1.0:
        raise AnalysisError(f"tau must be a number in [0, 1], got {tau!r}")


def _default_concepts(concepts) -> dict:
    if concepts is None:
        return {name: name for name in DEFAULT_CONCEPTS}
    if not isinstance(concepts, dict) or not concepts:
        raise AnalysisError("concepts must be a non-empty dict {name: texts or set name}, "
                            f"got {type(concepts).__name__}")
    return concepts


def _texts(data, n_texts: int):
    """A built-in set name loads ``n_texts`` texts; lists and stores pass through."""
    return load_texts(data, n_texts) if isinstance(data, str) else data


# -- overlaps ---------------------------------------------------------------------------------
def expert_overlap(sets_df: pd.DataFrame, concepts: list[str] | None = None) -> pd.DataFrame:
    """Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of the expert sets of every concept pair
    (ExpertLens, METHODS.md §7); a unit is a ``(site, unit)`` pair.

    ``concepts`` defaults to ``sets_df.attrs["concepts"]`` (so concepts without experts still
    appear), else the concepts in the frame. Returns one row per ordered pair, diagonal
    included (a symmetric matrix in long form): ``concept_a``, ``concept_b``, ``n_a``, ``n_b``
    (set sizes), ``n_both`` (shared experts), ``jaccard`` (NaN when both sets are empty).
    ``tau`` and ``metric`` are carried over in ``df.attrs`` (figure titles use them).
    """
    _require(sets_df, ["concept", "site", "unit"], "expert_overlap")
    if concepts is None:
        concepts = sets_df.attrs.get("concepts") or list(dict.fromkeys(sets_df["concept"]))
    if not concepts:
        raise AnalysisError("expert_overlap found no concepts (the frame is empty)")
    units = {c: set() for c in concepts}
    for c, site, unit in zip(sets_df["concept"], sets_df["site"], sets_df["unit"]):
        if c in units:
            units[c].add((str(site), int(unit)))
    rows = []
    for a in concepts:
        for b in concepts:
            both = len(units[a] & units[b])
            union = len(units[a]) + len(units[b]) - both
            rows.append({"concept_a": a, "concept_b": b, "n_a": len(units[a]),
                         "n_b": len(units[b]), "n_both": both,
                         "jaccard": both / union if union else float("nan")})
    out = pd.DataFrame(rows, columns=OVERLAP_COLUMNS)
    out.attrs = {k: sets_df.attrs[k] for k in ("tau", "metric") if k in sets_df.attrs}
    return out


def jaccard(a: set, b: set) -> float:
    """``|a ∩ b| / |a ∪ b|``; NaN when both are empty."""
    union = len(a | b)
    return len(a & b) / union if union else float("nan")


def hypergeom_tail(n_both: int, width: int, n_a: int, n_b: int) -> float:
    """P(X ≥ n_both) for X the overlap of two independent uniformly random subsets of sizes
    ``n_a`` and ``n_b`` of ``width`` units (hypergeometric), computed exactly with integers."""
    top = min(n_a, n_b)
    if n_both <= max(0, n_a + n_b - width):
        return 1.0
    num = sum(math.comb(n_a, x) * math.comb(width - n_a, n_b - x) for x in range(n_both, top + 1))
    return num / math.comb(width, n_b)


def aura_lineas_overlap(aura_steerer: Steerer, lineas_steerer: Steerer,
                        k: int | None = None) -> pd.DataFrame:
    """Per shared site, overlap of the units AurA dampens with the units LinEAS moves.

    AurA side: units with gain α < 1 (AUROC > 0.5; METHODS.md §3), or with ``k`` the ``k``
    smallest α among them. LinEAS side: its support, units with ω ≠ 1 or b ≠ 0 (the
    sparse-group lasso zeroes the rest; METHODS.md §5.3), or with ``k`` the ``k`` largest
    ``|ω − 1| + |b|`` among them. Without sparsity (γ = 0) LinEAS moves every unit, so pass
    ``k`` for a meaningful comparison. Det0/Damp steerers work too (their experts have α < 1).

    Returns one row per site both steer: ``site``, ``layer``, ``point``, ``width``, ``n_aura``,
    ``n_lineas``, ``n_both``, ``jaccard``, ``expected_both`` (``n_aura·n_lineas/width``, the
    mean overlap of independent random sets) and ``p_value`` (P(overlap ≥ ``n_both``) under
    that hypergeometric null; small = more overlap than chance).
    """
    shared = _shared_sites(aura_steerer, lineas_steerer)
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise AnalysisError(f"k must be a positive integer or None, got {k!r}")
    rows = []
    for site in shared:
        alpha = aura_steerer.tensor(site, "omega").detach().double().cpu()
        omega, bias = (lineas_steerer.tensor(site, n) for n in ("omega", "bias"))
        move = (omega.detach().double().cpu() - 1).abs() + bias.detach().double().cpu().abs()
        a = _pick(-alpha, alpha < 1, k)  # most dampened = smallest α
        b = _pick(move, move > 0, k)
        width, both = len(alpha), len(a & b)
        rows.append({"site": str(site), "layer": site.layer, "point": site.point,
                     "width": width, "n_aura": len(a), "n_lineas": len(b), "n_both": both,
                     "jaccard": jaccard(a, b), "expected_both": len(a) * len(b) / width,
                     "p_value": hypergeom_tail(both, width, len(a), len(b))})
    return pd.DataFrame(rows, columns=AURA_LINEAS_COLUMNS)


def _shared_sites(aura, lineas) -> list:
    for s, want, role in ((aura, ("aura", "det0", "damp"), "aura_steerer"),
                          (lineas, ("lineas",), "lineas_steerer")):
        if not isinstance(s, Steerer) or s.method not in want:
            got = getattr(s, "method", type(s).__name__)
            raise AnalysisError(f"{role} must be a fitted {'/'.join(want)} steerer, got {got}")
        if not s.fitted:
            raise AnalysisError(f"{role} is not fitted; call .fit() first")
    if not same_model(aura.provenance.model, lineas.provenance.model):
        raise AnalysisError("the two steerers were fitted on different models "
                            f"({aura.provenance.model.get('name')} vs "
                            f"{lineas.provenance.model.get('name')})")
    shared = sorted(set(aura.sites) & set(lineas.sites))
    if not shared:
        raise AnalysisError(f"the steerers share no site (aura: {[str(s) for s in aura.sites]}, "
                            f"lineas: {[str(s) for s in lineas.sites]}); fit both with the "
                            "same sites=")
    return shared


def _pick(score: torch.Tensor, eligible: torch.Tensor, k: int | None) -> set[int]:
    """Indices of eligible units; with ``k`` only the ``k`` highest-scoring of them."""
    idx = eligible.nonzero().flatten()
    if k is not None and len(idx) > k:
        idx = idx[torch.argsort(score[idx], descending=True, stable=True)[:k]]
    return set(idx.tolist())
