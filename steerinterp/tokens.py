"""Batch tokenisation that matches HuggingFace: left padding, BOS only where the model's HF
tokenizer adds one, truncation to ``max_tokens``, and the mask of positions that may be pooled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from transformer_lens import HookedTransformer


@dataclass
class Batch:
    """Left-padded tokens for one forward pass.

    ``attention_mask`` marks real tokens; ``pool_mask`` marks the tokens that enter pooled
    statistics (real tokens minus the first one when ``skip_first``).
    """

    tokens: Int[torch.Tensor, "batch pos"]
    attention_mask: Int[torch.Tensor, "batch pos"]
    pool_mask: Bool[torch.Tensor, "batch pos"]


def check_texts(texts: object, what: str = "texts", *, allow_empty: bool = False,
                allow_blank: bool = False, error: type[Exception] = ValueError) -> list[str]:
    """``texts`` as a list of strings, or ``error`` naming the problem: one string where a list
    belongs, an empty list (unless ``allow_empty``), items that are not strings, and empty or
    whitespace-only items (unless ``allow_blank``). Every entry point checks its texts here."""
    if isinstance(texts, (str, bytes)):
        raise error(f"{what} must be a list of strings, not a single string; wrap it: [text]")
    texts = list(texts)
    if not texts and not allow_empty:
        raise error(f"empty text list: no {what} given")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise error(f"{what} must be strings: {what}[{bad[0]}] is "
                    f"{type(texts[bad[0]]).__name__} (positions {bad[:10]})")
    blank = [] if allow_blank else [i for i, t in enumerate(texts) if not t.strip()]
    if blank:
        raise error(f"{what} at positions {blank[:10]}{' ...' if len(blank) > 10 else ''} are "
                    f"empty or whitespace-only ({len(blank)} of {len(texts)})")
    return texts


def token_ids(model: HookedTransformer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text, BOS prepended iff the model's default says so, truncated."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"model {model.cfg.model_name} has no tokenizer; pass one to the model")
    ids = tok(list(texts), add_special_tokens=False)["input_ids"]
    if model.cfg.default_prepend_bos:
        ids = [[tok.bos_token_id, *x] for x in ids]
    return [x[:max_tokens] for x in ids]


def ids_with_next_token(model: HookedTransformer, texts: list[str], max_tokens: int,
                        purpose: str, what: str = "texts",
                        error: type[Exception] = ValueError) -> list[list[int]]:
    """:func:`token_ids`, checking that every text has a token after the first one (BOS, or
    the attention-sink first word on models without BOS), which analyses never read or score.
    ``purpose`` ends the error message (what needs that token); ``error`` is its type."""
    if max_tokens < 2:
        raise error(f"max_tokens must be at least 2 (the first token and one more), got "
                    f"{max_tokens}")
    ids = token_ids(model, texts, max_tokens)
    short = [i for i, x in enumerate(ids) if len(x) < 2]
    if short:
        i = short[0]
        raise error(f"{what}: {len(short)} text(s) have no token after the first (BOS) one "
                    f"(e.g. #{i}: {texts[i][:40]!r}; all: {short[:10]}); {purpose}")
    return ids


def pad_left(model: HookedTransformer, ids: list[list[int]], skip_first: bool) -> Batch:
    """Stack variable-length ids into a left-padded :class:`Batch` on the model's device."""
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    width = max(len(x) for x in ids)
    tokens = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        if x:
            tokens[i, width - len(x):] = torch.tensor(x)
            mask[i, width - len(x):] = 1
    pool = mask.bool().clone()
    if skip_first:
        # With left padding the first real token sits at width - len(x).
        for i, x in enumerate(ids):
            if x:
                pool[i, width - len(x)] = False
    device = model.cfg.device
    return Batch(tokens.to(device), mask.to(device), pool.to(device))
