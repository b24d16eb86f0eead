"""Per-unit expertise maps: how well each unit's max-pooled response detects a concept.

* :func:`neuron_auroc` — AUROC and average precision of every unit at the chosen sites, the
  quantity AurA dampens by (Suau et al. 2024, "Whispering Experts"; METHODS.md §3) and the one
  ExpertLens thresholds (Fedzechkina et al. 2025; METHODS.md §7).
* :func:`top_experts` — the k most selective units over all sites.
* :func:`expert_tokens` — for each expert, the tokens (with context) where it fires most.

Every function returns a tidy DataFrame (one row per unit, or per expert × hit); the columns are
listed in each docstring and checked by ``tests/test_analysis_auroc.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..collection import collect, validate_texts
from ..data import length_match as _length_match
from ..metrics import auroc, average_precision
from ..sites import Site, default_sites, parse_sites
from ..store import ActivationStore, StoreError
from ..tokens import ids_with_next_token, token_ids

AUROC_COLUMNS = ["site", "layer", "point", "unit", "auroc", "ap", "rank_in_site",
                 "mean_pos", "mean_neg"]
TOKEN_COLUMNS = ["rank", "site", "layer", "point", "unit", "auroc", "hit", "text", "position",
                 "token", "context", "activation"]


class AnalysisError(ValueError):
    """An analysis asked for something it cannot compute (bad texts, sites or frames)."""


# -- neuron_auroc -----------------------------------------------------------------------------
def neuron_auroc(model: HookedTransformer, positive_texts, negative_texts, sites=None,
                 pool: str = "max", max_tokens: int = 64, batch_size: int = 16,
                 length_match: bool = True, progress: bool = True) -> pd.DataFrame:
    """AUROC of every unit at ``sites`` as a detector of ``positive_texts`` (label 1) against
    ``negative_texts`` (label 0), on ``pool``-pooled activations (AurA: max; METHODS.md §3).

    Texts are lists of strings or :class:`ActivationStore` s already collected on ``model`` with
    the same ``pool``. ``sites=None``: AurA's default sites for the model's architecture (or the
    sites of a given store). ``length_match`` (default) pairs the two text lists and cuts the
    longer text of each pair to its partner's token length (extra texts are dropped): max-pooled
    statistics grow with length, and unmatched lengths push AUROCs toward one class (ASSETS.md
    pitfalls). Stores are used as they are.

    Returns one row per unit: ``site`` (str, e.g. ``"L3.mlp_pre"``), ``layer``, ``point``,
    ``unit`` (index within the site), ``auroc`` (0.5 = chance, 1 = every positive text above
    every negative), ``ap`` (average precision for the positive label; chance = the positive
    share), ``rank_in_site`` (1 = highest AUROC at that site), ``mean_pos`` / ``mean_neg``
    (mean pooled activation per class). ``df.attrs`` holds ``n_pos``, ``n_neg``, ``pool`` and
    ``model``.
    """
    pos, neg = _prepare(model, positive_texts, negative_texts, length_match, max_tokens)
    sites = _resolve_sites(model, sites, pos, neg)
    kw = dict(sites=sites, pool=pool, max_tokens=max_tokens, batch_size=batch_size,
              progress=progress)
    pos_store = _as_store(model, pos, "positive", **kw)
    neg_store = _as_store(model, neg, "negative", **kw)
    frame = pd.concat([_site_frame(s, pos_store[s], neg_store[s]) for s in sites],
                      ignore_index=True)
    frame.attrs.update(n_pos=pos_store.n, n_neg=neg_store.n, pool=pool,
                       model=pos_store.model_name)
    return frame


def _prepare(model, pos, neg, match: bool, max_tokens: int):
    """Validate text inputs (naming the set at fault) and length-match them when both are
    texts; stores pass through."""
    out = []
    for data, role in ((pos, "positive"), (neg, "negative")):
        if isinstance(data, ActivationStore):
            out.append(data)
            continue
        try:
            out.append(validate_texts(data))
        except StoreError as e:
            raise AnalysisError(f"{role} texts: {e}") from None
    if match and all(isinstance(x, list) for x in out):
        out = list(_length_match(model, out[0], out[1]))
    for data, role in zip(out, ("positive", "negative")):
        if isinstance(data, list):
            check_poolable(model, data, role, max_tokens)
    return out


def check_poolable(model: HookedTransformer, texts: list[str], role: str,
                   max_tokens: int) -> None:
    """Every text needs a token after the first one: the first (BOS, or the attention-sink
    first word on models without BOS) is never pooled (see ``collect``)."""
    ids_with_next_token(model, texts, max_tokens, "the AUROC pools only later tokens: drop "
                        "them or use longer texts", what=f"{role} texts", error=AnalysisError)


def _resolve_sites(model, sites, pos, neg) -> list[Site]:
    if sites is None:
        stores = [x for x in (pos, neg) if isinstance(x, ActivationStore)]
        sites = stores[0].sites if stores else default_sites(model, "aura")
    return sorted(parse_sites(sites, model))  # raises SiteError naming a site not on the model


def _as_store(model, data, role: str, sites: list[Site], pool: str, max_tokens: int,
              batch_size: int, progress: bool) -> ActivationStore:
    if not isinstance(data, ActivationStore):
        return collect(model, data, sites, pool=pool, batch_size=batch_size,
                       max_tokens=max_tokens, progress=progress)
    data.check_model(model)
    if data.pool != pool:
        raise AnalysisError(f"the {role} store was pooled with {data.pool!r}, but pool={pool!r} "
                            "was asked; recollect it or pass the store's pooling")
    missing = [str(s) for s in sites if s not in data]
    if missing:
        raise AnalysisError(f"the {role} store lacks site(s) {missing}; it has "
                            f"{[str(s) for s in data.sites]}")
    return data


def _site_frame(site: Site, pos: torch.Tensor, neg: torch.Tensor) -> pd.DataFrame:
    """One site's rows: AUROC/AP with positives labelled 1, and the rank of each unit."""
    x = torch.cat([pos, neg]).float()
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    try:
        auc, ap = auroc(x, y), average_precision(x, y)
    except ValueError as e:  # NaN/inf activations, typically from a diverged model
        raise AnalysisError(f"cannot score units at {site}: {e}") from None
    rank = torch.empty(len(auc), dtype=torch.long)
    rank[torch.argsort(-auc, stable=True)] = torch.arange(1, len(auc) + 1)
    return pd.DataFrame({
        "site": str(site), "layer": site.layer, "point": site.point,
        "unit": np.arange(len(auc)), "auroc": auc.cpu().numpy(), "ap": ap.cpu().numpy(),
        "rank_in_site": rank.numpy(), "mean_pos": pos.double().mean(0).numpy(),
        "mean_neg": neg.double().mean(0).numpy()})


# -- top_experts ------------------------------------------------------------------------------
def top_experts(df: pd.DataFrame, k: int = 20, by: str = "auroc") -> pd.DataFrame:
    """The ``k`` rows of a :func:`neuron_auroc` frame with the highest ``by`` (``auroc`` or
    ``ap``), over all sites together as AurA's Det0 ranks them (METHODS.md §3).

    Returns those rows (same columns) plus ``rank`` (1 = most selective), best first; ties keep
    the frame's order.
    """
    _require(df, ["site", "unit", by], "top_experts")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise AnalysisError(f"k must be a positive integer, got {k!r}")
    if not pd.api.types.is_numeric_dtype(df[by]):
        raise AnalysisError(f"cannot rank by {by!r}: the column is not numeric")
    out = df.sort_values(by, ascending=False, kind="stable").head(int(k)).reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def _require(df, columns: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise AnalysisError(f"{what} needs a DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise AnalysisError(f"{what} needs column(s) {missing}; the frame has {list(df.columns)}")


# -- expert_tokens ----------------------------------------------------------------------------
def expert_tokens(model: HookedTransformer, df_top: pd.DataFrame, texts: list[str],
                  n_tokens: int = 5, max_tokens: int = 64, context: tuple[int, int] = (6, 2),
                  distinct_texts: bool = True, batch_size: int = 16,
                  progress: bool = False) -> pd.DataFrame:
    """Where each expert of ``df_top`` (e.g. :func:`top_experts`) fires most in ``texts``: its
    ``n_tokens`` highest per-token activations, at most one per text when ``distinct_texts``
    (so one repeated phrase does not fill the list), as in the "finding experts" read-outs of
    ExpertLens (METHODS.md §7). Per-token activations come from ``collect(pool="none")`` at
    the experts' sites; the first token is skipped, as in pooling.

    Returns one row per expert × hit: ``rank`` (the expert's rank, from ``df_top`` or its row
    order), ``site``, ``layer``, ``point``, ``unit``, ``auroc`` (NaN if ``df_top`` has none),
    ``hit`` (1 = strongest), ``text`` (index into ``texts``), ``position`` (token index, BOS
    = 0), ``token`` (decoded), ``context`` (``context[0]`` tokens before and ``context[1]``
    after, the token in «»), ``activation``.
    """
    _require(df_top, ["site", "unit"], "expert_tokens")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or n_tokens < 1:
        raise AnalysisError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    try:
        texts = validate_texts(texts)
    except StoreError as e:
        raise AnalysisError(f"expert_tokens texts: {e}") from None
    check_poolable(model, texts, "expert_tokens", max_tokens)
    experts = _expert_rows(df_top, model)
    acts_of, lengths = _expert_acts(model, texts, list(experts["key"]), max_tokens, batch_size,
                                    progress)
    ids = token_ids(model, texts, max_tokens)
    text_of, pos_of = _row_index(lengths)
    first = int(bool(model.cfg.default_prepend_bos))  # context never shows a BOS token
    rows = []
    for e in experts.itertuples(index=False):
        site, unit = e.key
        acts = acts_of[e.key]
        hits = _top_rows(acts, text_of, int(n_tokens), distinct_texts)
        for hit, r in enumerate(hits, 1):
            t, p = int(text_of[r]), int(pos_of[r])
            tok, ctx = _token_context(model.tokenizer, ids[t], p, context, first)
            rows.append({"rank": e.rank, "site": str(site), "layer": site.layer,
                         "point": site.point, "unit": unit, "auroc": e.auroc, "hit": hit,
                         "text": t, "position": p, "token": tok, "context": ctx,
                         "activation": float(acts[r])})
    return pd.DataFrame(rows, columns=TOKEN_COLUMNS)


def _expert_acts(model, texts: list[str], keys: list[tuple[Site, int]], max_tokens: int,
                 batch_size: int, progress: bool) -> tuple[dict, torch.Tensor]:
    """Per-token activations ``{(site, unit): [tokens]}`` of the experts only, texts in order,
    and the rows per text. Collected ``batch_size`` texts at a time, keeping only the expert
    columns: one per-token store of all texts at every expert site would hold
    tokens × sites × width floats (about 1 GB for 256 texts at 13 gemma-3-270m MLP sites)."""
    sites = sorted({s for s, _ in keys})
    parts: dict = {k: [] for k in keys}
    lengths = []
    chunks = range(0, len(texts), batch_size)
    for i in tqdm(chunks, desc="expert tokens", disable=not progress):
        store = collect(model, texts[i:i + batch_size], sites, pool="none",
                        batch_size=batch_size, max_tokens=max_tokens, progress=False)
        for site, unit in parts:
            parts[(site, unit)].append(store[site][:, unit].clone())  # drop the full rows
        lengths.append(store.lengths)
    return {k: torch.cat(v) for k, v in parts.items()}, torch.cat(lengths)


def _expert_rows(df_top: pd.DataFrame, model: HookedTransformer) -> pd.DataFrame:
    """``rank``, ``auroc`` and a parsed ``(Site, unit)`` key per expert, checked on ``model``."""
    out = pd.DataFrame({
        "rank": df_top["rank"].to_numpy() if "rank" in df_top else np.arange(1, len(df_top) + 1),
        "auroc": df_top["auroc"].to_numpy() if "auroc" in df_top else np.nan})
    keys = []
    for site, unit in zip(df_top["site"], df_top["unit"]):
        s = parse_sites([site], model)[0]
        width = s.width(model)
        if not 0 <= int(unit) < width:
            raise AnalysisError(f"unit {unit} does not exist at {s} (width {width})")
        keys.append((s, int(unit)))
    out["key"] = keys
    return out


def _row_index(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text index and token position (BOS = 0) of each per-token row: rows are a text's tokens
    after the first, texts in order."""
    lengths = lengths.long()
    text_of = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    pos_of = torch.arange(int(lengths.sum())) - starts[text_of] + 1
    return text_of, pos_of


def _top_rows(acts: torch.Tensor, text_of: torch.Tensor, n: int, distinct: bool) -> list[int]:
    order = torch.argsort(acts, descending=True, stable=True).tolist()
    if not distinct:
        return order[:n]
    picked, seen = [], set()
    for r in order:
        t = int(text_of[r])
        if t not in seen:
            seen.add(t)
            picked.append(r)
            if len(picked) == n:
                break
    return picked


def _token_context(tok, ids: list[int], p: int, window: tuple[int, int],
                   first: int) -> tuple[str, str]:
    """The token at ``p`` and a short context around it, from position ``first`` on."""
    def dec(x):
        return tok.decode(x, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    token = dec([ids[p]])
    before = dec(ids[max(first, p - window[0]):p])
    after = dec(ids[p + 1:p + 1 + window[1]])
    context = " ".join(f"{before}«{token}»{after}".split())  # newlines would break tables
    return token, context
