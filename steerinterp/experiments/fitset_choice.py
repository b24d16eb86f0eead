"""Choosing the default fit sets: every fit-set kind measured the same way, on the calibration
split only (``steerinterp compare-fitsets``).

**Measure.** For each kind (``fitsets.KINDS``) and each map (mean shift, Linear-AcT), fitted on
``n`` + ``n`` texts:

* the **toxicity cut at a fixed perplexity cost**: λ calibrated to ``budget`` (+5%) PPL on
  calibration Wikipedia text, then the mean Jigsaw score of continuations of the calibration
  toxic prompts, as a ratio to the unsteered model on the same prompts and seeds (paired);
* the **PPL cost at the papers' λ = 1** on the same calibration text.

Why this measure: every kind can drive toxicity to zero by wrecking the model, and every kind
is harmless at λ → 0; what separates them is how much toxicity goes per unit of utility spent,
which is what a user dialling λ gets. Fit prompts, calibration prompts (``toxic[400:]``) and
evaluation prompts (``toxic_prompts``) are disjoint, and the PPL text is the far end of
``wiki_ppl``, which the main job also reserves for calibration.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from transformer_lens import HookedTransformer

from ..data import load_texts
from .fitsets import KINDS, calibration_prompts, toxicity_fit_sets
from ..io import fingerprint, read_json, write_csv, write_json
from ..steer import SteerError, load_steerer, make
from ..evaluate.generation import GenerationSettings
from ..evaluate.harness import BASELINE, EvalSettings, compare, evaluate, steerer_fingerprint
from ..evaluate.perplexity import perplexity
from ..evaluate.sweep import calibrate

METHODS = ("mean_shift", "linear_act")


def calibration_ppl_texts(n: int) -> list[str]:
    """The far end of ``wiki_ppl`` (never used for evaluation by the main job)."""
    wiki = load_texts("wiki_ppl")
    return wiki[len(wiki) - n:]


def compare_fit_sets(model: HookedTransformer, kinds=KINDS, methods=METHODS, n: int = 64,
                     n_prompts: int = 96, samples: int = 1, n_ppl: int = 32,
                     budget: float = 0.05, seed: int = 0, folder: str | Path = "results/fitsets",
                     options: dict | None = None, progress: bool = True,
                     log=print) -> pd.DataFrame:
    """One row per (kind, method): PPL at λ = 1, and the λ calibrated to ``budget`` with the
    toxicity of calibration prompts there. ``options`` (e.g. ``{"causal_target":
    "unsteered"}``) go to every method's config and name the rows (``options`` column) and
    their cache folders. Resumable: steerers, calibrations and evaluations are saved under
    ``folder``; returns the frame also saved as ``fitsets.csv``."""
    folder, options = Path(folder), dict(options or {})
    label = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    for method in methods:  # a wrong option is refused before any work
        make(method, **options)
    prompts = calibration_prompts()[:n_prompts]
    ppl_texts = calibration_ppl_texts(n_ppl)
    settings = EvalSettings(generation=GenerationSettings(samples=samples, seed=seed))
    base_ppl = perplexity(model, ppl_texts, progress=False)
    kw = dict(prompts=prompts, ppl_texts=ppl_texts, settings=settings, progress=progress)
    evals = [evaluate(model, condition=BASELINE, folder=folder / "eval" / BASELINE, **kw)]
    rows = []
    for kind in kinds:
        source, target = toxicity_fit_sets(model, n=n, kind=kind, seed=seed, log=log)
        for method in methods:
            name = f"{kind}/{method}" + (f"[{label}]" if label else "")
            steerer = _fit_or_load(model, method, options, source, target,
                                   folder / "steerers" / name)
            one = perplexity(model, ppl_texts, steerer, strength=1.0, progress=False)
            cal = _calibrated(model, steerer, ppl_texts, budget, base_ppl,
                              folder / "calibration" / name)
            log(f"[fitsets] {name}: λ=1 PPL {one['ppl'].mean():.2f}; calibrated λ = "
                f"{cal['strength']:.3g}")
            cond = f"{name}@{cal['strength']:.3g}"
            evals.append(evaluate(model, steerer, strength=cal["strength"], condition=cond,
                                  folder=folder / "eval" / cond.replace("/", "_"), **kw))
            rows.append({"condition": cond, "kind": kind, "method": method, "options": label,
                         "strength": cal["strength"],
                         "ppl_at_1": float(one["ppl"].mean()),
                         "delta_ppl_rel_at_1": float(one["ppl"].mean() /
                                                     base_ppl["ppl"].mean() - 1)})
    frame = pd.DataFrame(rows).merge(compare(evals).drop(columns="strength"), on="condition")
    write_csv(folder / "fitsets.csv", frame)
    return frame


def _fit_or_load(model, method: str, options: dict, source, target, path: Path):
    if (path / "config.json").exists():
        try:
            return load_steerer(path, model)
        except (SteerError, ValueError, FileNotFoundError):
            pass
    steerer = make(method, **options).fit(model, source, target)
    steerer.save(path)
    return steerer


def _calibrated(model, steerer, ppl_texts, budget, base_ppl, path: Path) -> dict:
    key = fingerprint({"steer": steerer_fingerprint((steerer,), None), "budget": budget,
                       "texts": fingerprint(ppl_texts)})
    meta = path / "calibration.json"
    if meta.exists():
        done = read_json(meta, "calibration")
        if done.get("key") == key:
            return done
    cal = calibrate(model, steerer, ppl_texts, ppl_budget=budget, max_evals=7, base=base_ppl)
    result = {"key": key, "strength": cal.strength, "delta_ppl_rel": cal.delta_ppl_rel}
    write_json(meta, result)
    return result
