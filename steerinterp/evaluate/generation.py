"""Batched, KV-cached, steerable text generation with paired (common-random-number) sampling.

:func:`decode` prefills left-padded prompts into a KV cache, then feeds one token per step, and
applies the final norm and the unembedding at the last position only, with ``W_U.T`` taken once
per call. TL 3.9's ``generate`` instead computes logits at every prompt position and copies
``W_U.T`` every step (670 MB for Gemma-3's vocabulary, unless ``load_model``'s layout avoids it);
greedy tokens are identical. Blocks run through TL's forward, so every hook (hence every
steerer attached by :func:`~steerinterp.steer.steered`) fires on the prompt and on each token.

Sampling is paired across conditions: row ``(prompt, sample, seed)`` owns a generator seeded by
:func:`row_seed` (independent of the batch and the steering) that draws one uniform per step;
the token is that uniform's inverse CDF over the filtered distribution in a canonical order
(probability descending, then token id). Steered and unsteered runs share their noise and
differ only where their distributions do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.utilities.activation_functions import apply_softcap

from ..io import CorruptFileError, atomic_write
from ..steer import Steerer, steered
from ..tokens import check_texts, pad_left, token_ids
from .logits import final_residual

__all__ = ["COLUMNS", "GenerationSettings", "PRESETS", "decode", "decode_continuations",
           "generate", "load_generations", "row_seed", "save_generations", "settings_for",
           "unembed_weight"]

COLUMNS = ("prompt_id", "prompt", "sample", "seed", "continuation", "n_new_tokens")
HEAD = 1024  # tokens sorted per row and step; a full sort of 262k ids costs ~45 ms per row
# Added tokens that are not text although their tokenizer does not flag them special
# (Gemma-3's image placeholders in the GGUF-converted tokenizer).
NON_TEXT_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>", "[multimodal]")


@dataclass(frozen=True)
class GenerationSettings:
    """How continuations are produced. ``temperature=0`` is greedy (all samples identical).

    ``repetition_penalty`` follows HF/CTRL: logits of tokens already present (prompt and
    generated, pads excluded) are divided by it if positive, multiplied if negative.
    ``top_k`` then ``top_p`` filter after the temperature, as HF's warpers do.
    """

    max_new_tokens: int = 20
    samples: int = 2  # continuations per prompt
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int | None = None
    repetition_penalty: float = 1.0
    batch_size: int = 16  # sequences (prompt × sample) per forward pass
    max_prompt_tokens: int = 64
    seed: int = 0
    stop_at_eos: bool = False

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "samples", "batch_size", "max_prompt_tokens"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("seed", self.seed)
        if self.top_k is not None:
            _check_int("top_k", self.top_k, low=1)
        _check_float("temperature", self.temperature, self.temperature >= 0, ">= 0")
        _check_float("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]")
        _check_float("repetition_penalty", self.repetition_penalty,
                     self.repetition_penalty > 0, "> 0")
        if not isinstance(self.stop_at_eos, bool):
            raise ValueError(f"stop_at_eos must be True or False, got {self.stop_at_eos!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_int(name: str, value, low: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_float(name: str, value, ok: bool, rule: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value}")


PRESETS: dict[str, GenerationSettings] = {
    "default": GenerationSettings(),
    # AcT/ActAdd RTP protocol (METHODS.md §4.5): 32 tokens, top-p 0.3, penalty 1.2, 1 sample.
    "act": GenerationSettings(max_new_tokens=32, top_p=0.3, repetition_penalty=1.2, samples=1),
    "greedy": GenerationSettings(temperature=0.0, top_p=1.0, samples=1),
}


def settings_for(preset: str = "default", **overrides) -> GenerationSettings:
    """A preset from :data:`PRESETS` with some fields replaced, e.g. ``settings_for("act",
    max_new_tokens=20)``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown generation preset {preset!r}; choose one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(GenerationSettings)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown generation setting(s) {unknown}; valid: {sorted(fields)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def row_seed(prompt: str, sample: int, seed: int) -> int:
    """The generator seed of one continuation: a stable hash of (prompt text, sample, seed), so
    it does not depend on the batch, the prompt's position in the list, or the process."""
    digest = hashlib.sha256(f"{seed}\x1f{sample}\x1f{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: a valid manual_seed


# --------------------------------------------------------------------------- the decode loop


def unembed_weight(model: HookedTransformer) -> Float[torch.Tensor, "d_vocab d_model"]:
    """``W_U.T`` as a contiguous matrix (the layout ``F.linear`` wants, as TL's ``Unembed``).

    Free when ``load_model`` stored ``W_U`` transposed-contiguous; otherwise one copy, held by
    the caller for the whole generation instead of being redone every step. The model itself is
    never modified.
    """
    return model.unembed.W_U.T.contiguous()


def _last_logits(model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"],
                 mask: Int[torch.Tensor, "batch pos"], cache: TransformerLensKeyValueCache,
                 w_t: Float[torch.Tensor, "d_vocab d_model"],
                 ) -> Float[torch.Tensor, "batch d_vocab"]:
    """Run ``tokens`` through the blocks (hooks fire on every position, the cache grows), then
    the final norm and the unembedding on the last position only, as TL's forward would."""
    x = model.unembed.hook_in(final_residual(model, tokens, mask, cache, last_only=True))
    logits = model.unembed.hook_out(F.linear(x, w_t.to(x.device), model.unembed.b_U))
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)[:, 0]


def _penalize(x: Float[torch.Tensor, "batch d_vocab"], seen: Bool[torch.Tensor, "batch d_vocab"],
              penalty: float) -> Float[torch.Tensor, "batch d_vocab"]:
    """HF/CTRL repetition penalty on the logits of tokens already present."""
    return torch.where(seen, torch.where(x < 0, x * penalty, x / penalty), x)


def _canonical_head(row: Float[torch.Tensor, "d_vocab"], k: int) -> Int[torch.Tensor, "n"]:
    """Ids of the ``k`` largest logits (and any tied with the k-th), sorted by logit descending
    then id ascending: a function of the distribution alone, whatever topk's tie order."""
    if k >= row.shape[0]:
        return row.sort(descending=True, stable=True).indices
    kth = row.topk(k).values[-1]
    ids = (row >= kth).nonzero()[:, 0]  # ascending ids, so the stable sort breaks ties by id
    return ids[row[ids].sort(descending=True, stable=True).indices]


def _sample_row(x: Float[torch.Tensor, "d_vocab"], probs: Float[torch.Tensor, "d_vocab"],
                u: float, settings: GenerationSettings) -> int:
    """Inverse-CDF draw of ``u`` over the top-k / top-p filtered ``probs = softmax(x)``, in
    canonical order."""
    vocab = x.shape[0]
    k = settings.top_k if settings.top_k is not None and settings.top_k < vocab else None
    if k is not None:  # as HF: top-k first, then top-p on the renormalised top-k distribution
        ids = _canonical_head(x, k)[:k]
        p = probs[ids] / probs[ids].sum()
    else:
        ids = _canonical_head(x, HEAD)
        if settings.top_p == 1:  # nothing is filtered: the tail follows in id order, unsorted
            tail = torch.ones(vocab, dtype=torch.bool, device=x.device)
            tail[ids] = False
            ids = torch.cat([ids, tail.nonzero()[:, 0]])
        elif probs[ids].sum() < settings.top_p:  # a flat distribution: the nucleus is wider
            ids = _canonical_head(x, vocab)
        p = probs[ids]
    if settings.top_p < 1:  # keep the smallest head whose mass reaches top_p (HF's rule)
        p = p.masked_fill(p.cumsum(-1) - p >= settings.top_p, 0)
    cdf = p.cumsum(-1)
    pick = torch.searchsorted(cdf, cdf[-1:] * u, right=True)
    # u * total can round up to total: stay on the last token with non-zero mass
    pick = torch.minimum(pick, (p > 0).sum(-1, keepdim=True) - 1)
    return int(ids[pick])


def _next_tokens(logits: Float[torch.Tensor, "batch d_vocab"],
                 seen: Bool[torch.Tensor, "batch d_vocab"] | None,
                 settings: GenerationSettings, uniforms: list[float] | None
                 ) -> Int[torch.Tensor, "batch"]:
    x = logits.float()  # exact for bf16/fp16 logits, so greedy picks what TL's argmax picks
    if seen is not None:
        x = _penalize(x, seen, settings.repetition_penalty)
    if settings.greedy:
        return x.argmax(-1)
    x = x / settings.temperature
    probs = x.softmax(-1)
    picks = [_sample_row(xr, pr, u, settings) for xr, pr, u in zip(x, probs, uniforms)]
    return torch.tensor(picks, dtype=torch.long, device=logits.device)


def _seen(tokens: Int[torch.Tensor, "batch pos"], mask: Int[torch.Tensor, "batch pos"],
          d_vocab: int) -> Bool[torch.Tensor, "batch d_vocab"]:
    # scatter_add, not scatter: a pad id may equal a real prompt token (GPT-2: pad = bos)
    counts = torch.zeros(tokens.shape[0], d_vocab, device=tokens.device)
    return counts.scatter_add_(1, tokens, mask.to(counts.dtype)) > 0


@torch.inference_mode()
def decode(model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"],
           attention_mask: Int[torch.Tensor, "batch pos"], settings: GenerationSettings,
           seeds: Sequence[int] | None = None,
           unembed: Float[torch.Tensor, "d_vocab d_model"] | None = None,
           ) -> tuple[Int[torch.Tensor, "batch new"], Int[torch.Tensor, "batch"]]:
    """New tokens for a left-padded batch, and how many each row produced.

    ``seeds`` (one per row, see :func:`row_seed`) are required unless ``settings.greedy``.
    With ``stop_at_eos`` a finished row emits pad tokens and stops counting (its EOS counts), and
    the loop ends when every row has finished, so ``new`` may be shorter than
    ``max_new_tokens``. Uses whatever hooks are attached to ``model``.
    """
    n_rows = tokens.shape[0]
    if not settings.greedy and (seeds is None or len(seeds) != n_rows):
        raise ValueError(f"sampling needs one seed per row ({n_rows}), got "
                         f"{None if seeds is None else len(seeds)}")
    device = tokens.device
    w_t = unembed_weight(model) if unembed is None else unembed
    gens = None if settings.greedy else [torch.Generator().manual_seed(int(s)) for s in seeds]
    tok = model.tokenizer
    eos = tok.eos_token_id if settings.stop_at_eos else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    seen = None if settings.repetition_penalty == 1 else \
        _seen(tokens, attention_mask, model.cfg.d_vocab_out)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, n_rows)
    logits = _last_logits(model, tokens, attention_mask, cache, w_t)
    ones = torch.ones(n_rows, 1, dtype=attention_mask.dtype, device=device)
    done = torch.zeros(n_rows, dtype=torch.bool, device=device)
    counts = torch.zeros(n_rows, dtype=torch.long, device=device)
    out = []
    for step in range(settings.max_new_tokens):
        # one uniform per row and step, drawn even for finished rows: streams stay aligned
        u = None if gens is None else [torch.rand((), generator=g).item() for g in gens]
        nxt = _next_tokens(logits, seen, settings, u).where(~done, pad)
        counts += ~done
        out.append(nxt)
        if eos is not None:
            done |= nxt == eos
        if step == settings.max_new_tokens - 1 or bool(done.all()):
            break
        if seen is not None:
            seen[torch.arange(n_rows, device=device), nxt] = True
        logits = _last_logits(model, nxt[:, None], ones, cache, w_t)
    return torch.stack(out, dim=1), counts


# --------------------------------------------------------------------------- prompts → table


def _prompt_ids(model: HookedTransformer, prompts: list[str],
                settings: GenerationSettings) -> list[list[int]]:
    """Token ids of every prompt; too long for the limit or the context → ValueError."""
    ids = token_ids(model, prompts, max_tokens=10**9)  # no silent truncation
    n_ctx = model.cfg.n_ctx
    for i, x in enumerate(ids):
        if len(x) > settings.max_prompt_tokens:
            raise ValueError(f"prompt {i} has {len(x)} tokens, more than max_prompt_tokens="
                             f"{settings.max_prompt_tokens}; shorten it or raise the limit "
                             "(max_prompt_tokens; CLI: --max-prompt-tokens)")
        if len(x) + settings.max_new_tokens > n_ctx:
            raise ValueError(f"prompt {i} has {len(x)} tokens; with max_new_tokens="
                             f"{settings.max_new_tokens} that exceeds the model's context "
                             f"n_ctx={n_ctx}")
    return ids


def _non_text_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for i, added in tokenizer.added_tokens_decoder.items():
        if added.special or added.content in NON_TEXT_TOKENS:
            ids.add(int(i))
    return ids


def decode_continuations(tokenizer, new_tokens: Int[torch.Tensor, "batch new"],
                         counts: Int[torch.Tensor, "batch"]) -> list[str]:
    """Text of each row's first ``counts`` new tokens, without special or non-text tokens
    (EOS, pads, Gemma-3's ``<start_of_image>``…), ready for a scorer."""
    drop = _non_text_ids(tokenizer)
    rows = new_tokens.tolist()
    return [tokenizer.decode([t for t in row[:n] if t not in drop], skip_special_tokens=True)
            for row, n in zip(rows, counts.tolist())]


def generate(model: HookedTransformer, prompts: Sequence[str], *steerers: Steerer,
             strength: float | None = None, settings: GenerationSettings = GenerationSettings(),
             scorer: Callable[[list[str]], Sequence[float]] | None = None,
             progress: bool = True) -> pd.DataFrame:
    """Continuations of ``prompts`` (``settings.samples`` each) with ``steerers`` attached.

    Returns one row per (prompt, sample), in prompt order, with columns ``prompt_id`` (index in
    ``prompts``), ``prompt``, ``sample``, ``seed`` (``settings.seed``; the row's generator seed
    is ``row_seed(prompt, sample, seed)``), ``continuation`` (special tokens stripped),
    ``n_new_tokens``, and ``score`` when ``scorer`` (texts → toxicity probabilities) is given.
    Sequences are batched longest first to limit padding; the result does not depend on that.
    """
    prompts = check_texts(prompts, "prompts")
    ids = _prompt_ids(model, prompts, settings)
    rows = [(i, s) for i in range(len(prompts)) for s in range(settings.samples)]
    rows.sort(key=lambda r: -len(ids[r[0]]))
    w_t = unembed_weight(model)  # once for the whole call
    texts, counts = {}, {}
    starts = range(0, len(rows), settings.batch_size)
    with steered(model, *steerers, strength=strength):
        for start in tqdm(starts, desc="generate", unit="batch", disable=not progress):
            chunk = rows[start:start + settings.batch_size]
            batch = pad_left(model, [ids[i] for i, _ in chunk], skip_first=False)
            seeds = [row_seed(prompts[i], s, settings.seed) for i, s in chunk]
            new, n = decode(model, batch.tokens, batch.attention_mask, settings, seeds, w_t)
            for key, text, k in zip(chunk, decode_continuations(model.tokenizer, new, n),
                                    n.tolist()):
                texts[key], counts[key] = text, k
    order = sorted(rows)
    df = pd.DataFrame({
        "prompt_id": [i for i, _ in order], "prompt": [prompts[i] for i, _ in order],
        "sample": [s for _, s in order], "seed": settings.seed,
        "continuation": [texts[r] for r in order], "n_new_tokens": [counts[r] for r in order]})
    if scorer is not None:
        scores = np.asarray(scorer(df["continuation"].tolist()), dtype=float).reshape(-1)
        if len(scores) != len(df):
            raise ValueError(f"scorer returned {len(scores)} scores for {len(df)} texts")
        df["score"] = scores
    return df


# --------------------------------------------------------------------------- files


def save_generations(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as JSON lines, atomically: a failed write leaves no partial file behind."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"not a generations table: columns {missing} are missing")
    records = df.to_dict(orient="records")

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False, default=_json_scalar) + "\n")
            f.flush()
            os.fsync(f.fileno())

    atomic_write(Path(path), write)
    return Path(path)


def _json_scalar(value):
    if isinstance(value, np.generic):  # numpy scalars only; anything else is an error
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to a generations file")


def load_generations(path: str | os.PathLike) -> pd.DataFrame:
    """Read a file written by :func:`save_generations`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"generations file {path} does not exist")
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise CorruptFileError(f"generations file {path}: line {n} is not valid "
                                           f"JSON ({err})") from err
    df = pd.DataFrame.from_records(records, columns=None if records else list(COLUMNS))
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CorruptFileError(f"generations file {path} lacks columns {missing}")
    return df
