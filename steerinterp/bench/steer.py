"""Steering benchmarks: generation throughput steered vs unsteered (and folded into the weights),
and the vectorised :func:`~steerinterp.metrics.auroc` vs a per-unit sklearn loop.

Like :mod:`steerinterp.bench`, results are ratios measured in the same run on the same machine
(conditions interleaved, medians kept), never asserted in tests.
"""

from __future__ import annotations

import gc
import statistics
import time

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from ..experiments.sizes import BENCH_OPTIONS
from .common import machine, sync
from ..collection import collect
from ..data import length_match, load_texts
from ..metrics import auroc
from ..sites import parse_sites
from ..steer import SteerError, available, fold_into_weights, make, steered
from ..tokens import pad_left, token_ids

# Fit options the benchmark uses; every other option is the method's default (default sites).
# Throughput does not depend on how well a map is fitted, so LinEAS trains only a few steps
# here (1000 steps take ~50 min on a 2-core CPU); DSAS gates mean_shift, with the target set
# as its control set.
AUROC_POINTS = ("mlp_pre", "mlp_pre_linear", "mlp_post")  # every MLP unit of a gated MLP


def fit_texts(model: HookedTransformer, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` length-matched (toxic, Wikipedia) pairs: the source/target sets, or ActAdd's pairs."""
    return length_match(model, load_texts("toxic", n=n, seed=seed),
                        load_texts("wiki_target", n=n, seed=seed))


@torch.inference_mode()
def _generate(model: HookedTransformer, tokens: torch.Tensor, new_tokens: int) -> torch.Tensor:
    # stop_at_eos=False: every condition generates exactly new_tokens per prompt, so the
    # conditions do the same work even where steering changes when EOS would come.
    return model.generate(tokens, max_new_tokens=new_tokens, do_sample=False,
                          use_past_kv_cache=True, stop_at_eos=False, verbose=False)


def _timed(fn, device: str) -> tuple[float, float, object]:
    """Wall seconds, this process's CPU seconds (CPU / wall well under the thread count means
    something else was running) and ``fn``'s result."""
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, out


def bench_steer(model: HookedTransformer, methods: list[str] | None = None, n_fit: int = 32,
                n_prompts: int = 4, new_tokens: int = 32, repeats: int = 3,
                seed: int = 0) -> pd.DataFrame:
    """Greedy generation throughput per method: ``unsteered``, ``steered`` (hooks via
    :func:`steered`) and ``folded`` (:func:`fold_into_weights`, where the sites allow it).

    Each method is fitted once (default sites, ``BENCH_OPTIONS``) on ``n_fit`` length-matched toxic
    vs Wikipedia texts; fit time is reported apart. Then one batch of ``n_prompts`` left-padded
    ``toxic_prompts`` generates ``new_tokens`` each (KV cache, no early stop). After one untimed
    warm-up generation, each method runs ``repeats`` rounds of every condition once, in an
    order rotated each round; ``tok_per_s`` = new tokens / median seconds (prefill included)
    and ``ratio`` = condition / unsteered of the same method. ``agree_steered`` is the share of
    a condition's generated tokens equal to the hooked run's: on the folded row ~1 (greedy; only
    float rounding flipping a near-tie makes it less), on the unsteered row it shows how much
    steering changed the text. One row per method × condition.
    """
    device = str(model.cfg.device)
    methods = list(methods or available())
    source, target = fit_texts(model, n_fit, seed)
    prompts = load_texts("toxic_prompts", n=n_prompts, seed=seed)
    tokens = pad_left(model, token_ids(model, prompts, 64), skip_first=False).tokens
    n_new = tokens.shape[0] * new_tokens
    where = {"model": model.cfg.model_name, "device": device, "machine": machine(device),
             "n_fit": len(source), "n_prompts": n_prompts, "prompt_tokens": tokens.shape[1],
             "new_tokens": new_tokens, "repeats": repeats}
    rows = []
    for name in methods:
        t0 = time.perf_counter()
        steerer = make(name, **BENCH_OPTIONS.get(name, {})).fit(model, source=source, target=target)
        fit_s = time.perf_counter() - t0
        try:
            folded, note = fold_into_weights(model, steerer), ""
        except SteerError as err:
            folded, note = None, f"not folded: {err}"

        def run_steered(s=steerer):
            with steered(model, s):
                return _generate(model, tokens, new_tokens)

        runs = {"unsteered": lambda: _generate(model, tokens, new_tokens),
                "steered": run_steered}
        if folded is not None:
            runs["folded"] = lambda f=folded: _generate(f, tokens, new_tokens)
        if not rows:
            runs["unsteered"]()  # one warm-up (allocator, first-call costs) for the whole run
        times: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        outputs: dict[str, torch.Tensor] = {}  # greedy: every repeat gives the same tokens
        names = list(runs)
        for rep in range(repeats):
            for k in names[rep % len(names):] + names[:rep % len(names)]:
                wall, used, out = _timed(runs[k], device)
                times[k].append(wall)
                cpu[k].append(used / wall)
                outputs.setdefault(k, out[:, -new_tokens:])
        base = n_new / statistics.median(times["unsteered"])
        for cond in ("unsteered", "steered", "folded"):
            med = statistics.median(times[cond]) if cond in times else float("nan")
            agree = (outputs[cond] == outputs["steered"]).float().mean().item() \
                if cond in outputs else float("nan")
            rows.append({"method": name, "condition": cond, "tok_per_s": n_new / med,
                         "ratio": n_new / med / base, "median_s": med,
                         "min_s": min(times[cond]) if cond in times else float("nan"),
                         "cpu_per_wall": statistics.median(cpu[cond]) if cond in cpu
                         else float("nan"), "agree_steered": agree, "fit_s": fit_s,
                         "n_sites": len(steerer.sites),
                         "note": note if cond == "folded" else "", **where})
        del folded, runs, outputs
        gc.collect()
    return pd.DataFrame(rows)


def summarize_steer(df: pd.DataFrame) -> pd.DataFrame:
    """One row per method: fit seconds, tokens/s unsteered and steered, both ratios."""
    wide = df.pivot(index="method", columns="condition", values="tok_per_s")
    ratio = df.pivot(index="method", columns="condition", values="ratio")
    fit = df.groupby("method")[["fit_s", "n_sites"]].first()
    notes = df[df.condition == "folded"].set_index("method")["note"]
    out = pd.DataFrame({
        "method": wide.index, "sites": fit["n_sites"].to_numpy(),
        "fit_s": fit["fit_s"].to_numpy(),
        "unsteered_tok_s": wide["unsteered"].to_numpy(),
        "steered_tok_s": wide["steered"].to_numpy(),
        "steered_ratio": ratio["steered"].to_numpy(),
        "folded_ratio": ratio["folded"].to_numpy(),
        "folded_note": [_short(notes.get(m, "")) for m in wide.index]})
    return out.reset_index(drop=True)


def _short(note: str) -> str:
    """The SteerError's first clause: which site, and why it cannot fold."""
    return note.split(";")[0] if note else ""


# -- AUROC: vectorised vs per-unit sklearn -----------------------------------------------------
def bench_auroc(model: HookedTransformer, n: int = 256, points=AUROC_POINTS,
                subset: int = 1024, repeats: int = 3, seed: int = 0,
                max_tokens: int = 64) -> dict:
    """:func:`~steerinterp.metrics.auroc` over every unit at ``points`` of all layers vs a loop
    of ``sklearn.metrics.roc_auc_score`` per unit.

    Activations: ``n`` toxic + ``n`` Wikipedia texts (length-matched), max-pooled as AurA fits
    them. The sklearn loop runs on ``subset`` units drawn at random (fixed seed) and is
    extrapolated linearly to all units (its cost per unit does not depend on the unit); the
    two results are compared on that subset. ``auroc`` is timed on all units, median of
    ``repeats`` after one warm-up.
    """
    from sklearn.metrics import roc_auc_score

    device = str(model.cfg.device)
    source, target = fit_texts(model, n, seed)
    sites = parse_sites(",".join(f"all.{p}" for p in points), model)
    t0 = time.perf_counter()
    store = collect(model, source + target, sites, pool="max", max_tokens=max_tokens,
                    progress=False)
    collect_s = time.perf_counter() - t0
    x = torch.cat([store[s] for s in sites], dim=1).contiguous()
    labels = torch.cat([torch.ones(len(source)), torch.zeros(len(target))])
    del store
    ours = auroc(x, labels)  # warm-up
    times = []
    for _ in range(repeats):
        times.append(_timed(lambda: auroc(x, labels), device)[0])
    ours_s = statistics.median(times)

    n_units = x.shape[1]
    k = min(subset, n_units)
    idx = torch.randperm(n_units, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    cols = np.asfortranarray(x[:, idx].numpy())  # contiguous columns: fair to the loop
    y = labels.numpy()
    t0 = time.perf_counter()
    theirs = np.array([roc_auc_score(y, cols[:, j]) for j in range(k)])
    loop_s = time.perf_counter() - t0
    diff = np.abs(ours[idx].numpy() - theirs)
    return {
        "model": model.cfg.model_name, "device": device, "machine": machine(device),
        "points": ",".join(points), "pool": "max", "n_source": len(source),
        "n_target": len(target), "n_units": n_units, "collect_s": collect_s,
        "auroc_s": ours_s, "auroc_units_per_s": n_units / ours_s,
        "sklearn_subset_units": k, "sklearn_subset_s": loop_s,
        "sklearn_per_unit_ms": 1e3 * loop_s / k,
        "sklearn_extrapolated_s": loop_s * n_units / k,
        "ratio": loop_s * n_units / k / ours_s,
        "max_abs_diff": float(diff.max()), "n_differ_1e-12": int((diff > 1e-12).sum()),
        "repeats": repeats, "torch_threads": torch.get_num_threads(),
    }
