"""The main job (``steerinterp run``, ``make demo``): fit every method on the built-in sets,
evaluate each and the unsteered model on held-out toxic prompts and Wikipedia text, and write
a results folder (CSV of every number, Markdown report, figures).

Fit, calibration and evaluation texts are disjoint built-in splits (``data.py``), so nothing
is tuned on the evaluation prompts. Everything lands in the folder as it finishes (steerers,
one sub-folder per evaluated condition), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from transformer_lens import HookedTransformer

from ..data import length_match, load_texts
from .fitsets import DEFAULT_KIND, KINDS, toxicity_fit_sets
from ..io import (CorruptFileError, ensure_writable_dir, fingerprint, read_csv, read_json,
                  write_csv, write_json)
from ..sites import site_spec
from ..steer import Steerer, load_or_fit, make
from ..tokens import token_ids
from ..evaluate.generation import PRESETS, GenerationSettings, settings_for
from ..evaluate.harness import BASELINE, EvalSettings, Evaluation, compare
from ..evaluate.perplexity import perplexity
from ..evaluate.progress import StageClock
from ..evaluate.sweep import SweepInputs, calibrate, evaluate_condition
from ..executors import Executor, LocalExecutor
from .sizes import JOB_SIZES, JobSize


# What `steerinterp demo` runs: the methods the project is about.
DEMO_METHODS = ("aura", "linear_act", "lineas", "dsas+linear_act")

# Generation protocols of the run: ``default`` takes its tokens and samples from the size;
# ``act`` is AcT's RTP protocol (METHODS.md §4.5) whole: 32 tokens, top-p 0.3, repetition
# penalty 1.2, one sample per prompt.
SAMPLING = ("default", "act")

# name → (method, options, base name). Strength λ = 1 for every map (the papers' default);
# ITI-c at the LinEAS paper's λ = 0.5.
METHODS: dict[str, tuple[str, dict, str | None]] = {
    "aura": ("aura", {}, None),
    "det0": ("det0", {}, None),
    "mean_shift": ("mean_shift", {}, None),
    "iti": ("iti", {"strength": 0.5}, None),
    "linear_act": ("linear_act", {}, None),
    "lineas": ("lineas", {}, None),
    "dsas+linear_act": ("dsas", {}, "linear_act"),
    "dsas+lineas": ("dsas", {}, "lineas"),
}


@dataclass(frozen=True)
class JobSpec:
    """Everything a run's numbers depend on; a results folder holds one spec."""

    model: str
    size: str = "default"
    methods: tuple[str, ...] = tuple(METHODS)
    seed: int = 0
    ppl_budget: float | None = 0.05  # None: evaluate at the default λ only
    scorer: str = "jigsaw"
    fit_set: str = DEFAULT_KIND  # fitsets.KINDS: how the toxic/non-toxic fit texts are built
    sampling: str = "default"  # SAMPLING: the generation protocol

    def __post_init__(self) -> None:
        if self.size not in JOB_SIZES:
            raise ValueError(f"unknown size {self.size!r}; sizes: {', '.join(JOB_SIZES)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; the run knows {', '.join(METHODS)}")
        if not self.methods:
            raise ValueError("the run needs at least one method")
        if self.fit_set not in KINDS:
            raise ValueError(f"unknown fit set {self.fit_set!r}; fit sets: {', '.join(KINDS)}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"unknown sampling {self.sampling!r}; choose one of "
                             f"{', '.join(SAMPLING)}")
        if self.ppl_budget is not None and not 0 < self.ppl_budget < 10:
            raise ValueError(f"ppl_budget is a relative increase (0.10 = +10%), "
                             f"got {self.ppl_budget}")

    @property
    def sizes(self) -> JobSize:
        return JOB_SIZES[self.size]

    def to_dict(self) -> dict:
        sizes = dataclasses.asdict(self.sizes)
        if sizes["lineas_precision"] == "fp32":  # runs saved before the option still resume
            del sizes["lineas_precision"]
        return {**dataclasses.asdict(self), "sizes": sizes}


@dataclass
class JobData:
    source: list[str]
    target: list[str]
    control: list[str]
    prompts: list[str]
    ppl_texts: list[str]
    calib_texts: list[str]


def job_data(model: HookedTransformer, spec: JobSpec) -> JobData:
    """Disjoint splits: the toxicity fit sets (``fitsets``, from the fit half of the toxic
    prompts) and wiki_control to fit, toxic_prompts and wiki_ppl to evaluate; λ is calibrated
    on the far end of wiki_ppl."""
    z, seed = spec.sizes, spec.seed
    source, target = toxicity_fit_sets(model, n=z.n_fit, kind=spec.fit_set, seed=seed)
    _, control = length_match(model, source, load_texts("wiki_control", n=z.n_fit, seed=seed))
    wiki = load_texts("wiki_ppl")
    if z.n_ppl + z.n_calib > len(wiki):
        raise ValueError(f"size {spec.size} needs {z.n_ppl + z.n_calib} wiki_ppl texts; the "
                         f"set has {len(wiki)}")
    return JobData(source, target, control, _prompts(model, spec),
                   wiki[:z.n_ppl], wiki[len(wiki) - z.n_calib:])


def prompt_limit(model: HookedTransformer, spec: JobSpec) -> int:
    """Longest prompt (tokens) the run generates from: 64, or less on a short-context model."""
    new_tokens = PRESETS["act"].max_new_tokens if spec.sampling == "act" else \
        spec.sizes.new_tokens
    return max_prompt_tokens(model, new_tokens)


def max_prompt_tokens(model: HookedTransformer, new_tokens: int) -> int:
    """64 tokens, or less where the context must also hold ``new_tokens``."""
    return min(64, model.cfg.n_ctx - new_tokens)


def _prompts(model: HookedTransformer, spec: JobSpec) -> list[str]:
    return eval_prompts(model, spec.sizes.n_prompts, spec.seed, prompt_limit(model, spec),
                        f"size {spec.size}")


def eval_prompts(model: HookedTransformer, n: int, seed: int, limit: int,
                 who: str = "the run", pool: list[str] | None = None) -> list[str]:
    """``n`` held-out prompts (``toxic_prompts``, or ``pool`` as given) in seeded order,
    skipping any longer than ``limit`` tokens (none on the real models: the built-in prompts
    are ~18 tokens)."""
    if pool is None:
        pool = load_texts("toxic_prompts")
        pool = load_texts("toxic_prompts", n=len(pool), seed=seed)
    lengths = [len(x) for x in token_ids(model, pool, max_tokens=10**9)]
    kept = [p for p, k in zip(pool, lengths) if k <= limit][:n]
    if len(kept) < n:
        raise ValueError(f"only {len(kept)} built-in prompts fit in {limit} tokens on "
                         f"{model.cfg.model_name}; {who} needs {n}")
    return kept


def open_folder(out: str | Path, spec: JobSpec, fresh: bool = False) -> Path:
    """Create ``out`` or check it holds a run of the same spec (then it resumes)."""
    out = ensure_writable_dir(Path(out))
    meta_path = out / "job.json"
    if meta_path.exists() and not fresh:
        try:
            old = read_json(meta_path, "run specification")
        except CorruptFileError:
            old = None
        if old is not None and old.get("fingerprint") != fingerprint(spec.to_dict()):
            new = json.loads(json.dumps(spec.to_dict()))  # tuples → lists, as saved
            differ = sorted(k for k, v in new.items() if old.get("spec", {}).get(k) != v)
            raise ValueError(f"{out} holds a run with other settings ({', '.join(differ)}); "
                             "use another --out, or --fresh to start over there")
    write_json(meta_path, {"fingerprint": fingerprint(spec.to_dict()), "spec": spec.to_dict()})
    return out


def fit_or_load(model: HookedTransformer, name: str, spec: JobSpec, data: JobData,
                fitted: dict[str, Steerer], folder: Path) -> Steerer:
    """The steerer ``name``, loaded from ``folder`` if a previous run saved it, else fitted."""
    def fit() -> Steerer:
        method, opts, base = METHODS[name]
        opts = {**opts, **spec.sizes.options(method)}
        if base is not None:  # a DSAS wraps the job's own fit of its base
            opts["base"] = fitted.get(base) or fit_or_load(model, base, spec, data, fitted,
                                                           folder)
        return make(method, **opts).fit(model, data.source, data.target, control=data.control)

    return load_or_fit(folder / name, model, fit)


def default_strength(steerer: Steerer) -> float:
    return float(steerer.config.strength)


def run_job(model: HookedTransformer, spec: JobSpec, out: str | Path, fresh: bool = False,
            progress: bool = True, log=print, executor: Executor | None = None) -> pd.DataFrame:
    """Run (or resume) the main job; returns the results frame also saved as ``results.csv``.

    Fits run here, one after another; the calibrations and then the evaluated conditions run
    on ``executor`` (default: this process; e.g. Ray workers, same frame)."""
    from .report import write_outputs  # the report imports plotting; keep it off import time

    out = open_folder(out, spec, fresh)
    data = job_data(model, spec)
    ex = executor if executor is not None else LocalExecutor()
    settings = EvalSettings(generation=generation_settings(model, spec), scorer=spec.scorer,
                            utility_n=spec.sizes.utility_n)
    t0 = time.perf_counter()
    k = len(spec.methods)
    clock = StageClock({"fit": k, "calibrate": k if spec.ppl_budget is not None else 0,
                        "evaluate": 1 + k * (2 if spec.ppl_budget is not None else 1)}, log,
                       parallel={"calibrate": ex.workers, "evaluate": ex.workers})
    fitted: dict[str, Steerer] = {}
    for name in spec.methods:
        with clock.stage("fit", f"{name}: fitting"):
            fitted[name] = fit_or_load(model, name, spec, data, fitted, out / "steerers")
    chosen = _strengths(model, fitted, spec, data, out, log, clock, ex)
    calls = [(BASELINE, BASELINE, None, out / "conditions" / BASELINE)]
    labels = [f"{spec.model}, size {spec.size}: the unsteered model"]
    rows = [{"condition": BASELINE, "method": BASELINE, "sites": "", "rule": "",
             "fit_seconds": 0.0}]
    for name, steerer in fitted.items():
        for lam, rule in chosen[name]:
            cond = f"{name}@{lam:.3g}"
            calls.append((cond, name, lam, out / "conditions" / cond))
            labels.append(f"{name}: evaluating at λ = {lam:.3g} ({rule})")
            rows.append({"condition": cond, "method": name, "rule": rule,
                         "sites": site_spec(steerer.sites, model.cfg.n_layers),
                         "fit_seconds": steerer.provenance.fit_seconds})
    inputs = SweepInputs({n: (s,) for n, s in fitted.items()}, data.prompts, data.ppl_texts,
                         settings, None, progress and ex.name == "local")
    evals = clock.map(ex, "evaluate", model, evaluate_condition, calls, inputs, labels)
    frame = pd.DataFrame(rows).merge(compare(evals), on="condition")
    write_outputs(frame, spec, out, seconds=time.perf_counter() - t0, model=model)
    return frame


def generation_settings(model: HookedTransformer, spec: JobSpec) -> GenerationSettings:
    """The run's sampling protocol (:data:`SAMPLING`) with its seed and prompt limit."""
    kw = dict(seed=spec.seed, max_prompt_tokens=prompt_limit(model, spec))
    if spec.sampling == "act":
        return settings_for("act", **kw)
    return settings_for("default", max_new_tokens=spec.sizes.new_tokens,
                        samples=spec.sizes.samples, **kw)


def _strengths(model: HookedTransformer, fitted: dict[str, Steerer], spec: JobSpec,
               data: JobData, out: Path, log, clock: StageClock,
               ex: Executor) -> dict[str, list[tuple[float, str]]]:
    """Per method: the default λ, and the calibrated one when a budget is set and it differs
    (the calibrations run on ``ex``)."""
    chosen = {name: [(default_strength(s), "default")] for name, s in fitted.items()}
    if spec.ppl_budget is None:
        return chosen
    _calibration_base(model, data, out / "calibration")  # once, before the workers read it
    names = list(fitted)
    job = CalibrationJob(fitted, spec, data, out / "calibration")
    cals = clock.map(ex, "calibrate", model, calibration_call, [(n,) for n in names], job,
                     [f"{n}: calibrating λ to +{spec.ppl_budget:.0%} PPL" for n in names])
    for name, cal in zip(names, cals):
        lam = chosen[name][0][0]
        log(f"[run]   {name} calibrated: λ = {cal['strength']:.3g} "
            f"({cal['delta_ppl_rel']:+.1%} PPL on calibration text)")
        if abs(cal["strength"] - lam) > 1e-3 * max(1.0, abs(lam)):
            chosen[name].append((cal["strength"], f"PPL ≤ +{spec.ppl_budget:.0%}"))
        else:
            clock.skip("evaluate")
    return chosen


@dataclass(frozen=True)
class CalibrationJob:
    """What every calibration of a run shares (shipped once to each worker)."""

    fitted: dict[str, Steerer]
    spec: JobSpec
    data: JobData
    folder: Path


def calibration_call(model: HookedTransformer, job: CalibrationJob, name: str) -> dict:
    """Calibrate one fitted method of the run (an executor call)."""
    return _calibration(model, job.fitted[name], job.spec, job.data, job.folder / name)


def _calibration_base(model: HookedTransformer, data: JobData, folder: Path) -> pd.DataFrame:
    """Unsteered perplexities of the calibration texts, computed once per run folder."""
    path = folder / "unsteered_perplexity.csv"
    key = fingerprint(data.calib_texts)[:16]
    if path.exists():
        try:
            frame = read_csv(path, "calibration baseline", ("key", "text_id", "ppl"))
            if (frame["key"] == key).all() and len(frame) == len(data.calib_texts):
                return frame.drop(columns="key")
        except CorruptFileError:
            pass
    frame = perplexity(model, data.calib_texts, progress=False)
    write_csv(path, frame.assign(key=key))
    return frame


def _calibration(model: HookedTransformer, steerer: Steerer, spec: JobSpec, data: JobData,
                 path: Path) -> dict:
    """Calibrated λ (saved; reused while the steerer, texts and budget are the same)."""
    from ..evaluate.harness import steerer_fingerprint

    key = fingerprint({"steer": steerer_fingerprint((steerer,), None),
                       "texts": fingerprint(data.calib_texts), "budget": spec.ppl_budget})
    meta = path / "calibration.json"
    if meta.exists():
        try:
            done = read_json(meta, "calibration")
            if done.get("key") == key:
                return done
        except CorruptFileError:
            pass
    cal = calibrate(model, steerer, data.calib_texts, ppl_budget=spec.ppl_budget,
                    max_strength=None if steerer.strength_range else 4.0, max_evals=6,
                    base=_calibration_base(model, data, path.parent))
    result = {"key": key, "strength": cal.strength, "delta_ppl_rel": cal.delta_ppl_rel,
              "saturated": cal.saturated, "path": cal.path.to_dict(orient="records")}
    write_json(meta, result)
    return result


__all__ = ["DEMO_METHODS", "JobSize", "JobSpec", "METHODS", "JOB_SIZES", "Evaluation", "run_job"]
