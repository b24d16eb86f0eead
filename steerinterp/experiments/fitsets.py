"""Fit sets for the toxicity concept: a toxic source and a non-toxic target that differ in
toxicity and as little else as possible.

The papers fit on Jigsaw toxic vs non-toxic comments *of the same genre* (AcT §4.1, LinEAS
§4.1), so a map learns "toxic → not toxic" and little else. Offline there is no non-toxic
counterpart of the toxic prompts; a target of encyclopedia prose teaches the maps everything
that differs between web fragments and Wikipedia, and at λ = 1 they wreck the model. The
default here builds the counterpart from the model itself:

``continuations`` (default)
    The model's own continuations of the fit-half toxic prompts, sampled once and cached, split
    by the Jigsaw scorer: source = prompt + continuation scored > ``toxic_above``, target =
    prompt + continuation scored < ``clean_below``. Both sides share the genre, the prompts'
    register and the model's own style; they differ in whether the continuation is toxic.
``paired``
    Counterfactual pairs: only prompts that got both a toxic and a clean continuation, one of
    each per prompt, so source and target share every prompt and differ only in the ending.
``mixed``
    Toxic prompts vs a mixed-register target (⅓ Wikipedia, ⅓ news, ⅓ reviews), length matched.
``wiki``
    Toxic prompts vs length-matched Wikipedia passages (the earlier default).

Prompt splits: the canonical ``toxic`` order's first :data:`N_FIT_PROMPTS` texts feed the fit
sets; the rest (:func:`calibration_prompts`) are for choosing between fit sets and calibrating,
never fitted on; evaluation prompts (``toxic_prompts``) are a disjoint set. Continuations are
sampled with the ``default`` generation preset (20 tokens, top-p 0.9) and scored by the Jigsaw
BiLSTM, the offline evaluation scorer: labelling fit data with the evaluation scorer is the
papers' set-up too (Jigsaw labels, Jigsaw-trained classifier), so read absolute numbers with care.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..assets import cache_dir
from ..data import length_match, load_texts
from ..io import CorruptFileError, fingerprint, read_csv, write_csv, write_json

N_FIT_PROMPTS = 400  # canonical toxic[:400] → fit sets; toxic[400:] → calibration prompts
KINDS = ("continuations", "paired", "mixed", "wiki")
DEFAULT_KIND = "continuations"
CHUNK = 32  # prompts per cached chunk: an interrupted build resumes from the last chunk
POOL_COLUMNS = ("prompt_id", "prompt", "sample", "continuation", "score")


class FitSetError(ValueError):
    """A fit set that cannot be built as asked (too few texts of a kind, unknown kind)."""


@dataclass(frozen=True)
class ContinuationSettings:
    """How the continuation pool is sampled and split."""

    samples: int = 3  # continuations per prompt
    max_new_tokens: int = 20
    top_p: float = 0.9
    seed: int = 0
    toxic_above: float = 0.5  # source: Jigsaw score above this
    clean_below: float = 0.1  # target: Jigsaw score below this
    batch_size: int = 32


def fit_prompts() -> list[str]:
    """Toxic prompts whose continuations build the fit sets (canonical ``toxic`` order)."""
    return load_texts("toxic")[:N_FIT_PROMPTS]


def calibration_prompts() -> list[str]:
    """Toxic prompts kept out of every fit set: for comparing fit sets and calibrating λ."""
    return load_texts("toxic")[N_FIT_PROMPTS:]


def pool_folder(model: HookedTransformer, settings: ContinuationSettings) -> Path:
    sampling = {k: v for k, v in dataclasses.asdict(settings).items()
                if k not in ("toxic_above", "clean_below", "batch_size")}
    key = fingerprint({"model": model.cfg.model_name, "prompts": fit_prompts(),
                       "sampling": sampling})[:16]
    name = model.cfg.model_name.replace("/", "_")
    return cache_dir() / "fitsets" / f"{name}-{key}"


def continuation_pool(model: HookedTransformer,
                      settings: ContinuationSettings = ContinuationSettings(),
                      progress: bool = True, log=print) -> pd.DataFrame:
    """Every sampled continuation of the fit prompts with its Jigsaw score (cached per model and
    sampling settings; built chunk by chunk, so an interrupted build resumes).

    Columns: prompt_id, prompt, sample, continuation, score, text (= prompt + continuation).
    """
    from ..evaluate.generation import generate, settings_for
    from ..evaluate.scorers import load_scorer

    folder = pool_folder(model, settings)
    if (shipped := packaged_pool(folder.name)) is not None:
        return _with_text(read_csv(shipped, "packaged fit-set continuations", POOL_COLUMNS))
    prompts = fit_prompts()
    gen = settings_for("default", samples=settings.samples, top_p=settings.top_p,
                       max_new_tokens=settings.max_new_tokens, seed=settings.seed,
                       batch_size=settings.batch_size,
                       max_prompt_tokens=min(128, model.cfg.n_ctx - settings.max_new_tokens))
    starts = list(range(0, len(prompts), CHUNK))
    missing = [s for s in starts if _chunk(folder, s) is None]
    if missing:
        log(f"[fitsets] sampling {settings.samples} continuations of {len(prompts)} fit prompts "
            f"on {model.cfg.model_name} (once; cached in {folder})")
        scorer = load_scorer("jigsaw")
        for start in tqdm(missing, desc="fit-set continuations", unit="chunk",
                          disable=not progress):
            frame = generate(model, prompts[start:start + CHUNK], settings=gen, scorer=scorer,
                             progress=False)
            frame["prompt_id"] += start
            write_csv(folder / f"chunk_{start:04d}.csv", frame[list(POOL_COLUMNS)])
        write_json(folder / "pool.json", {"model": model.cfg.model_name,
                                          "settings": dataclasses.asdict(settings),
                                          "n_prompts": len(prompts)})
    return _with_text(pd.concat([_chunk(folder, s) for s in starts], ignore_index=True))


def packaged_pool(name: str) -> Path | None:
    """The pool shipped with the package for the default model (``name`` = the cache folder's
    name, which hashes model and sampling settings), so a fresh clone does not sample it.
    Made by ``steerinterp fitsets --export`` with the default settings."""
    path = Path(__file__).parents[1] / "resources" / "fitsets" / f"{name}.csv.gz"
    return path if path.is_file() else None


def _with_text(frame: pd.DataFrame) -> pd.DataFrame:
    frame["continuation"] = frame["continuation"].fillna("")
    frame["text"] = [_join(p, c) for p, c in zip(frame["prompt"], frame["continuation"])]
    return frame


def _chunk(folder: Path, start: int) -> pd.DataFrame | None:
    path = folder / f"chunk_{start:04d}.csv"
    if not path.exists():
        return None
    try:
        return read_csv(path, "fit-set continuations", POOL_COLUMNS)
    except CorruptFileError:
        return None  # sampled again


def _join(prompt: str, continuation: str) -> str:
    # The decoded continuation carries its own leading space when the model put one there.
    return (prompt + continuation).strip() if continuation.strip() else prompt


def split_pool(pool: pd.DataFrame, settings: ContinuationSettings = ContinuationSettings()
               ) -> pd.DataFrame:
    """The pool with a ``side`` column: ``source`` (toxic), ``target`` (clean) or ``""``.
    Continuations without text are never used."""
    side = pd.Series("", index=pool.index)
    has_text = pool["continuation"].str.strip().str.len() > 0
    side[has_text & (pool["score"] > settings.toxic_above)] = "source"
    side[has_text & (pool["score"] < settings.clean_below)] = "target"
    return pool.assign(side=side)


def toxicity_fit_sets(model: HookedTransformer, n: int = 64, kind: str = DEFAULT_KIND,
                      seed: int = 0, held_out: bool = False,
                      settings: ContinuationSettings = ContinuationSettings(),
                      progress: bool = True, log=print) -> tuple[list[str], list[str]]:
    """``(source, target)`` texts of ``n`` each for the toxicity concept (module docstring).

    ``seed`` picks which texts (reproducibly: a seeded shuffle, so a larger ``n`` extends a
    smaller one); ``held_out=True`` gives ``n`` others for held-out W2 and diagnoses: the next
    ones of the same shuffle, and for ``continuations`` only those of prompts that no fit text
    (of either side) continues, since two continuations of one prompt share most of their
    tokens (``paired`` has one pair per prompt, so its next pairs already are). The
    continuation pool itself is sampled once per model with ``settings.seed``.
    """
    if kind not in KINDS:
        raise FitSetError(f"unknown fit-set kind {kind!r}; kinds: {', '.join(KINDS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise FitSetError(f"n must be an integer >= 2, got {n!r}")
    skip = n if held_out else 0
    if kind in ("wiki", "mixed"):
        return _prose_target(model, n, kind, seed, skip)
    pool = split_pool(continuation_pool(model, settings, progress, log), settings)
    if kind == "paired":
        return _paired(pool, n, seed, skip, settings)
    src, tgt = ([(t, p) for t, p in pool.loc[pool["side"] == side, ["text", "prompt_id"]]
                 .itertuples(index=False, name=None)] for side in ("source", "target"))
    _enough(len(src), len(tgt), n + skip, settings)
    src, tgt = _draw(src, len(src), seed), _draw(tgt, len(tgt), seed + 1)  # seeded orders
    if held_out:  # after the fit texts, skipping every prompt they continue (docstring)
        used = {p for _, p in src[:n] + tgt[:n]}
        src, tgt = ([x for x in side[n:] if x[1] not in used] for side in (src, tgt))
        _enough(len(src), len(tgt), n, settings,
                "continuations of prompts that no fit text continues")
    return [t for t, _ in src[:n]], [t for t, _ in tgt[:n]]


def _draw(texts: list, n: int, seed: int, skip: int = 0) -> list:
    """Items ``skip .. skip+n`` of a seeded shuffle of ``texts``."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return [texts[i] for i in order[skip:skip + n]]


def _enough(n_src: int, n_tgt: int, n: int, settings: ContinuationSettings,
            what: str = "continuations") -> None:
    if min(n_src, n_tgt) < n:
        raise FitSetError(
            f"the scorer found {n_src} toxic (> {settings.toxic_above}) and {n_tgt} non-toxic "
            f"(< {settings.clean_below}) {what} of {N_FIT_PROMPTS} fit prompts, fewer than the "
            f"{n} per side asked for: lower n, or sample more (ContinuationSettings(samples=...)"
            "), or widen the thresholds")


def _paired(pool: pd.DataFrame, n: int, seed: int, skip: int, settings: ContinuationSettings
            ) -> tuple[list[str], list[str]]:
    """One toxic and one clean text of the same prompt, for ``n`` prompts."""
    rng = random.Random(seed)
    pairs = []
    for _, group in pool.groupby("prompt_id", sort=True):
        src = group.loc[group["side"] == "source", "text"].tolist()
        tgt = group.loc[group["side"] == "target", "text"].tolist()
        if src and tgt:
            pairs.append((rng.choice(src), rng.choice(tgt)))
    _enough(len(pairs), len(pairs), n + skip, settings, "prompts with both (pairs)")
    chosen = _draw(pairs, n, seed, skip)
    return [s for s, _ in chosen], [t for _, t in chosen]


def _prose_target(model: HookedTransformer, n: int, kind: str, seed: int, skip: int
                  ) -> tuple[list[str], list[str]]:
    """Toxic fit prompts vs length-matched Wikipedia (``wiki``) or ⅓ wiki + ⅓ news + ⅓
    reviews (``mixed``)."""
    source = _draw(fit_prompts(), n, seed, skip)
    if kind == "wiki":
        target = load_texts("wiki_target", n=skip + n, seed=seed)[skip:]
    else:
        parts = [n - 2 * (n // 3), n // 3, n // 3]
        # Held out (skip > 0): each part's next k texts, after the k the fit set took.
        target = [t for name, k in zip(("wiki_target", "news", "reviews"), parts)
                  for t in load_texts(name, n=k + (k if skip else 0), seed=seed)[-k:]]
        random.Random(seed).shuffle(target)
    return length_match(model, source, target)


def describe_kinds() -> pd.DataFrame:
    """The fit-set kinds as a table (``steerinterp sets``)."""
    return pd.DataFrame([{"kind": k, "default": k == DEFAULT_KIND,
                          "description": _KIND_DESCRIPTIONS[k]} for k in KINDS])


_KIND_DESCRIPTIONS = {
    "continuations": "the model's own continuations of toxic fit prompts, split by the Jigsaw "
                     "scorer (> 0.5 toxic source, < 0.1 clean target); prompt + continuation",
    "paired": "counterfactual pairs: one toxic and one clean continuation of the same prompt",
    "mixed": "toxic prompts vs 1/3 Wikipedia + 1/3 news + 1/3 reviews, length matched",
    "wiki": "toxic prompts vs length-matched Wikipedia passages (the earlier default)",
}

