"""Teacher-forced perplexity under steering (AcT's PPL Wikipedia, METHODS.md §4.5).

Each text's first ``max_tokens`` tokens (BOS prepended iff the model's default) are scored with
the steering active on all positions; the headline number is the mean of per-text PPL, as in
AcT's ``act/utils/perplexity.py``; the log-probabilities come from :mod:`.logits` (chunked,
float32, never the full logits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..steer.apply import steered
from ..steer.base import Steerer
from ..tokens import check_texts, ids_with_next_token
from .logits import batch_nll
from .stats import cluster_se, mean_from_totals

__all__ = ["delta_perplexity", "perplexity", "summarize_perplexity"]

COLUMNS = ["text_id", "n_tokens", "nll", "ppl"]


def perplexity(model: HookedTransformer, texts: Sequence[str], *steerers: Steerer,
               strength: float | None = None, max_tokens: int = 64, batch_size: int = 16,
               progress: bool = True) -> pd.DataFrame:
    """Per-text teacher-forced perplexity with ``steerers`` active (``steered(model, ...)``).

    Columns: ``text_id`` (index into ``texts``), ``n_tokens`` (predicted tokens = real tokens
    − 1), ``nll`` (summed token NLL in nats), ``ppl`` = exp(nll / n_tokens). Padding never
    changes a text's numbers. Aggregate with :func:`summarize_perplexity`.
    """
    texts = check_texts(texts, allow_blank=True)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    ids = ids_with_next_token(model, texts, max_tokens, "perplexity needs a token to predict")
    # Longest first: batches of similar length waste little on padding, and an out-of-memory
    # error shows up in the first batch instead of at the end.
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    nll = np.empty(len(ids), dtype=np.float64)
    with steered(model, *steerers, strength=strength):
        for batch in tqdm(batches, desc="perplexity", disable=not progress):
            nll[batch] = batch_nll(model, [ids[i] for i in batch]).numpy()
    n_tokens = np.array([len(x) - 1 for x in ids])
    return pd.DataFrame({"text_id": np.arange(len(ids)), "n_tokens": n_tokens, "nll": nll,
                         "ppl": np.exp(nll / n_tokens)})


# --------------------------------------------------------------------------- aggregation


def _check_ppl_frame(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be the DataFrame perplexity() returns, got "
                        f"{type(df).__name__}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; expected {COLUMNS}")
    if len(df) == 0:
        raise ValueError(f"{name} has no rows")
    if df["text_id"].duplicated().any():
        raise ValueError(f"{name} has duplicated text_id values")
    if (df["n_tokens"] < 1).any():
        raise ValueError(f"{name} has rows with n_tokens < 1")
    # NaN/inf NLL (a model blown up by extreme λ) is kept: it propagates into the summaries,
    # so a λ search reads it as over budget instead of crashing.
    return df


def _log_ppl_influence(df: pd.DataFrame) -> tuple[float, np.ndarray]:
    """Token-weighted log-PPL r = Σnll/Σn and each text's influence sum (nll_g − r·n_g)/Σn."""
    nll, n = df["nll"].to_numpy(np.float64), df["n_tokens"].to_numpy(np.float64)
    r = nll.sum() / n.sum()
    return r, (nll - r * n) / n.sum()


def summarize_perplexity(df: pd.DataFrame) -> dict:
    """``ppl``: mean of per-text PPL (the AcT number) and ``ppl_se``, its SE across texts;
    ``ppl_token`` = exp(Σnll/Σn_tokens) and ``ppl_token_se`` (delta method, texts as clusters);
    ``n_texts``, ``n_tokens``."""
    df = _check_ppl_frame(df, "perplexity frame")
    ppl = df["ppl"].to_numpy(np.float64)
    r, se_r = mean_from_totals(df["nll"], df["n_tokens"])
    return {"ppl": float(ppl.mean()),
            "ppl_se": float(ppl.std(ddof=1) / math.sqrt(len(ppl))) if len(ppl) > 1 else math.nan,
            "ppl_token": math.exp(r), "ppl_token_se": math.exp(r) * se_r,
            "n_texts": len(df), "n_tokens": int(df["n_tokens"].sum())}


def _paired(steered_df: pd.DataFrame, base_df: pd.DataFrame) -> pd.DataFrame:
    """Rows of both frames joined on text_id; refuses frames over other texts or lengths."""
    steered_df = _check_ppl_frame(steered_df, "steered_df")
    base_df = _check_ppl_frame(base_df, "base_df")
    s_ids, b_ids = set(steered_df["text_id"]), set(base_df["text_id"])
    if s_ids != b_ids:
        raise ValueError(f"steered_df and base_df cover different texts: {len(b_ids - s_ids)} "
                         f"base text_id(s) missing from steered_df, {len(s_ids - b_ids)} extra")
    both = steered_df.merge(base_df, on="text_id", suffixes=("_s", "_b"))
    if (both["n_tokens_s"] != both["n_tokens_b"]).any():
        raise ValueError("n_tokens differ between steered_df and base_df for the same text_id; "
                         "were they computed with the same texts and max_tokens?")
    return both


def delta_perplexity(steered_df: pd.DataFrame, base_df: pd.DataFrame) -> dict:
    """Steered minus base, paired by ``text_id``.

    ``delta_ppl``: mean of per-text PPL differences, ``delta_ppl_se`` its paired SE,
    ``delta_ppl_rel`` = mean PPL ratio − 1; ``delta_ppl_token``, ``delta_ppl_token_se`` (delta
    method on both token-weighted log-PPLs, texts as clusters), ``delta_ppl_token_rel``;
    ``n_texts``. AcT's selection rule is ``delta_ppl < 1``.
    """
    both = _paired(steered_df, base_df)
    diff = (both["ppl_s"] - both["ppl_b"]).to_numpy(np.float64)
    n = len(diff)
    r_s, psi_s = _log_ppl_influence(both.rename(columns={"nll_s": "nll", "n_tokens_s": "n_tokens"}))
    r_b, psi_b = _log_ppl_influence(both.rename(columns={"nll_b": "nll", "n_tokens_b": "n_tokens"}))
    return {"delta_ppl": float(diff.mean()),
            "delta_ppl_se": float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            "delta_ppl_rel": float(both["ppl_s"].mean() / both["ppl_b"].mean() - 1),
            "delta_ppl_token": math.exp(r_s) - math.exp(r_b),
            # d(e^{r_s} − e^{r_b}) = e^{r_s} dr_s − e^{r_b} dr_b, summed per text (cluster)
            "delta_ppl_token_se": cluster_se(math.exp(r_s) * psi_s - math.exp(r_b) * psi_b),
            "delta_ppl_token_rel": math.exp(r_s - r_b) - 1,
            "n_texts": n}
