"""Teacher-forced perplexity under steering (AcT's PPL Wikipedia, METHODS.md §4.5).

Each text's first ``max_tokens`` tokens (BOS prepended iff the model's default) are scored with
the steering active on all positions; the headline number is the mean of per-text PPL, as in
AcT's ``act/utils/perplexity.py``. Full logits are never materialised: Gemma-3's 262k vocabulary
makes them 1 GB in fp32 for a 16×64 batch, so the final residual is unembedded in chunks of
positions and only each target's log-probability is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..steer.apply import steered
from ..steer.base import Steerer
from ..tokens import ids_with_next_token, pad_left
from .stats import cluster_se, mean_from_totals

__all__ = ["delta_perplexity", "perplexity", "summarize_perplexity"]

# Elements of one [positions, d_vocab] logits chunk: 2^25 floats = 128 MB in fp32, i.e. 128
# positions of Gemma-3 at a time. Module-level so tests can force several chunks.
LOGITS_PER_CHUNK = 2**25

COLUMNS = ["text_id", "n_tokens", "nll", "ppl"]


def perplexity(model: HookedTransformer, texts: Sequence[str], *steerers: Steerer,
               strength: float | None = None, max_tokens: int = 64, batch_size: int = 16,
               progress: bool = True) -> pd.DataFrame:
    """Per-text teacher-forced perplexity with ``steerers`` active (``steered(model, ...)``).

    Columns: ``text_id`` (index into ``texts``), ``n_tokens`` (predicted tokens = real tokens
    − 1), ``nll`` (summed token NLL in nats), ``ppl`` = exp(nll / n_tokens). Padding never
    changes a text's numbers. Aggregate with :func:`summarize_perplexity`.
    """
    texts = _check_texts(texts)
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
            nll[batch] = _batch_nll(model, [ids[i] for i in batch]).numpy()
    n_tokens = np.array([len(x) - 1 for x in ids])
    return pd.DataFrame({"text_id": np.arange(len(ids)), "n_tokens": n_tokens, "nll": nll,
                         "ppl": np.exp(nll / n_tokens)})


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    texts = list(texts)
    if not texts:
        raise ValueError("empty text list: perplexity needs at least one text")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts at positions {bad[:5]} are not strings")
    return texts


@torch.inference_mode()
def _batch_nll(model: HookedTransformer, ids: list[list[int]]) -> Float[torch.Tensor, "batch"]:
    """Summed next-token NLL per text of one left-padded batch (float64)."""
    batch = pad_left(model, ids, skip_first=False)
    # Run every block (hooks fire there), then the final norm on the whole grid so a hook on it
    # would still see [batch, pos, d_model]; the unembedding runs only on scored positions.
    resid = model(batch.tokens, attention_mask=batch.attention_mask,
                  stop_at_layer=model.cfg.n_layers)
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    real = batch.attention_mask.bool()
    # Position t predicts token t+1; with left padding both are real iff t is real.
    scored = real[:, :-1] & real[:, 1:]
    logp = _target_logprobs(model, resid[:, :-1][scored], batch.tokens[:, 1:][scored])
    rows = scored.nonzero()[:, 0].cpu()
    # Sum on the CPU in float64: exact enough for any length, and MPS has no float64.
    out = torch.zeros(len(ids), dtype=torch.float64)
    return out.index_add_(0, rows, -logp.cpu().double())


def _target_logprobs(model: HookedTransformer, resid: Float[torch.Tensor, "n d_model"],
                     targets: Int[torch.Tensor, "n"]) -> Float[torch.Tensor, "n"]:
    """log p(target) from the normalised final residual, ``LOGITS_PER_CHUNK`` logits at a time,
    in float32 (TL's own loss would take the log-softmax in the model's dtype)."""
    step = max(1, LOGITS_PER_CHUNK // model.cfg.d_vocab_out)
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    out = []
    for start in range(0, resid.shape[0], step):
        logits = model.unembed(resid[None, start:start + step])[0].float()
        if cap > 0:  # Gemma-2-style final soft-capping, as in HookedTransformer.forward
            logits = cap * torch.tanh(logits / cap)
        # gather − logsumexp avoids a second vocabulary-sized tensor for log_softmax
        target = logits.gather(-1, targets[start:start + step, None])[:, 0]
        out.append(target - torch.logsumexp(logits, dim=-1))
    return torch.cat(out) if out else resid.new_zeros(0, dtype=torch.float32)


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
