"""Strength sweeps, toxicity/utility Pareto fronts and ``calibrate``: the strongest setting of a
steerer whose perplexity cost stays within a budget.

The selection rule is the AcT paper's (METHODS.md §4.5: best toxicity among settings with a
bounded PPL increase); ``calibrate`` makes it cheap by searching λ on perplexity alone, on
calibration text kept apart from the evaluation text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from transformer_lens import HookedTransformer

from ..executors import Executor, LocalExecutor
from ..steer import Steerer, SteerError
from .harness import BASELINE, EvalSettings, Evaluation, compare, evaluate
from .perplexity import delta_perplexity, perplexity


def condition_name(name: str, strength: float) -> str:
    return f"{name}@{strength:g}"


def sweep(model: HookedTransformer, steerers: Mapping[str, Steerer | Sequence[Steerer]],
          strengths: Sequence[float] | Mapping[str, Sequence[float]], prompts: list[str],
          ppl_texts: list[str], settings: EvalSettings | None = None, scorer=None,
          cache_dir: str | Path | None = None, progress: bool = True,
          executor: Executor | None = None) -> pd.DataFrame:
    """Evaluate every steerer (or tuple of composed steerers) at every strength, and the
    unsteered model once, on the same prompts, seeds and texts.

    Returns a tidy frame, one row per condition: ``condition``, ``method`` (the key in
    ``steerers``; ``unsteered`` for the baseline), ``strength`` plus every column of
    :func:`~steerinterp.evaluate.harness.compare`. With ``cache_dir`` each condition is saved
    as it finishes and reused on a re-run, so an interrupted sweep resumes. ``executor``
    (:mod:`steerinterp.executors`, default local) runs the conditions, e.g. on Ray workers;
    the frame is the same.
    """
    settings = settings or EvalSettings()
    if not steerers:
        raise ValueError("sweep needs at least one steerer")
    if BASELINE in steerers:
        raise ValueError(f"{BASELINE!r} names the unsteered baseline; call the steerer "
                         "something else")
    grid = _grid(steerers, strengths)
    folder = (lambda name: Path(cache_dir) / name) if cache_dir is not None else (lambda _: None)
    ex = executor if executor is not None else LocalExecutor()
    groups = {name: tuple(g) if isinstance(g, (list, tuple)) else (g,)
              for name, g in steerers.items()}
    shared = SweepInputs(groups, prompts, ppl_texts, settings, scorer,
                         progress and ex.name == "local")
    calls = [(BASELINE, BASELINE, None, folder(BASELINE))]
    calls += [(condition_name(name, lam), name, lam, folder(condition_name(name, lam)))
              for name, lam in grid]
    evals = ex.map(model, evaluate_condition, calls, shared, labels=[c[0] for c in calls],
                   on_result=_reporter(calls, ex) if progress and ex.name != "local" else None)
    frame = compare(evals)
    frame.insert(1, "method", [c[1] for c in calls])
    frame["strength"] = [0.0] + [lam for _, lam in grid]
    return frame


@dataclass(frozen=True)
class SweepInputs:
    """What every condition of a sweep shares (shipped once to each worker)."""

    groups: dict[str, tuple[Steerer, ...]]
    prompts: list[str]
    ppl_texts: list[str]
    settings: EvalSettings
    scorer: object = None
    progress: bool = False


def evaluate_condition(model: HookedTransformer, inputs: SweepInputs, condition: str,
                       name: str, strength: float | None, folder: Path | None) -> Evaluation:
    """One condition of a sweep (an executor call): ``name`` is a key of ``inputs.groups`` or
    the baseline."""
    group = () if name == BASELINE else inputs.groups[name]
    return evaluate(model, *group, strength=strength, condition=condition, folder=folder,
                    prompts=inputs.prompts, ppl_texts=inputs.ppl_texts,
                    settings=inputs.settings, scorer=inputs.scorer, progress=inputs.progress)


def _reporter(calls: list[tuple], ex):
    done = []

    def report(i: int, _result) -> None:
        done.append(i)
        print(f"[sweep] {calls[i][0]} done ({len(done)}/{len(calls)}, {ex.name})", flush=True)
    return report


def _grid(steerers: Mapping, strengths) -> list[tuple[str, float]]:
    grid = []
    for name, group in steerers.items():
        lams = strengths[name] if isinstance(strengths, Mapping) else strengths
        if len(lams) == 0:
            raise ValueError(f"no strengths given for {name!r}")
        group = group if isinstance(group, (list, tuple)) else (group,)
        for lam in lams:
            for s in group:
                try:
                    s.check_strength(lam)
                except SteerError as err:
                    raise ValueError(f"sweep over {name!r}: {err}") from None
            grid.append((name, float(lam)))
    return grid


def pareto_front(frame: pd.DataFrame, x: str = "ppl", y: str = "mean_score") -> pd.DataFrame:
    """The rows no other row beats on both ``x`` and ``y`` (both minimised), sorted by ``x``.

    A row is dominated when another is at most as bad on both and strictly better on one.
    """
    for col in (x, y):
        if col not in frame.columns:
            raise ValueError(f"pareto_front: no column {col!r} in {list(frame.columns)}")
    xs, ys = frame[x].to_numpy(float), frame[y].to_numpy(float)
    keep = np.ones(len(frame), bool)
    for i in range(len(frame)):
        worse_eq = (xs <= xs[i]) & (ys <= ys[i])
        strictly = (xs < xs[i]) | (ys < ys[i])
        keep[i] = not np.any(worse_eq & strictly)
    return frame[keep].sort_values(x).reset_index(drop=True)


@dataclass
class Calibration:
    """Result of :func:`calibrate`: the chosen ``strength``, its relative PPL increase, whether
    the search hit the top of the steerer's range (``saturated``), and every point tried."""

    strength: float
    delta_ppl_rel: float
    budget: float
    saturated: bool
    path: pd.DataFrame

    def __repr__(self) -> str:
        return (f"Calibration(strength={self.strength:.4g}, delta_ppl_rel="
                f"{self.delta_ppl_rel:+.2%}, budget={self.budget:.0%}, "
                f"saturated={self.saturated}, points={len(self.path)})")


def calibrate(model: HookedTransformer, steerer: Steerer | Sequence[Steerer],
              ppl_texts: list[str], ppl_budget: float = 0.05, max_strength: float | None = None,
              tol: float = 0.01, max_evals: int = 10, max_tokens: int = 64,
              batch_size: int = 16, base: pd.DataFrame | None = None,
              progress: bool = False, executor: Executor | None = None) -> Calibration:
    """The largest λ whose perplexity on ``ppl_texts`` (mean of per-text PPL, paired with the
    unsteered model) rises by at most ``ppl_budget`` (0.05 = +5%).

    Searches on perplexity alone, never on the evaluation prompts: it first tries the top of
    the range (the steerer's upper bound, or ``max_strength`` / doubling from λ=1 for unbounded
    methods), then bisects between the largest λ known to be within budget and the smallest
    known to exceed it until the bracket is narrower than ``tol`` (relative to the top) or
    ``max_evals`` perplexity runs were spent. Keep ``ppl_texts`` disjoint from the texts the
    final evaluation uses. ``base``: the unsteered :func:`perplexity` frame of ``ppl_texts``
    when the caller already has it (calibrating several steerers on the same texts).
    With an ``executor`` of k workers each round tries k strengths at once (the doubling
    steps, or k points splitting the bracket into k + 1); one worker is the bisection above.
    """
    group = tuple(steerer) if isinstance(steerer, (list, tuple)) else (steerer,)
    if not 0 < ppl_budget < 10:
        raise ValueError(f"ppl_budget is a relative increase, e.g. 0.05 for +5%; got {ppl_budget}")
    if base is None:
        base = perplexity(model, ppl_texts, max_tokens=max_tokens, batch_size=batch_size,
                          progress=progress)
    ex = executor if executor is not None else LocalExecutor()
    k = max(1, ex.workers)  # λ values tried at once: one per worker
    inputs = PerplexityInputs(group, ppl_texts, max_tokens, batch_size,
                              progress and ex.name == "local")
    path: list[dict] = []

    def costs(lams: list[float]) -> list[float]:
        frames = ex.map(model, steered_perplexity, [(lam,) for lam in lams], inputs,
                        labels=[f"calibration at λ = {lam:.4g}" for lam in lams])
        for lam, frame in zip(lams, frames):
            d = delta_perplexity(frame, base)
            path.append({"strength": lam, "ppl": float(frame["ppl"].mean()),
                         "delta_ppl_rel": d["delta_ppl_rel"], "delta_ppl": d["delta_ppl"],
                         "within_budget": bool(d["delta_ppl_rel"] <= ppl_budget)})
        return [row["delta_ppl_rel"] for row in path[-len(lams):]]

    hi = _top(group, max_strength)
    (top_cost,) = costs([hi])
    lo, lo_cost = 0.0, 0.0
    if top_cost <= ppl_budget and _bounded(group, max_strength):
        return Calibration(hi, top_cost, ppl_budget, True, _path(path))
    while top_cost <= ppl_budget and len(path) < max_evals:  # unbounded: look further out
        lams = [hi * 2 ** (j + 1) for j in range(min(k, max_evals - len(path)))]
        tried = [(hi, top_cost), *zip(lams, costs(lams))]
        over = next((j for j in range(1, len(tried)) if tried[j][1] > ppl_budget), None)
        (lo, lo_cost), (hi, top_cost) = tried[-2:] if over is None else tried[over - 1:over + 1]
    top = hi
    while len(path) < max_evals and (hi - lo) > tol * top and top_cost > ppl_budget:
        n = min(k, max_evals - len(path))  # k points splitting the bracket evenly
        lams = [lo + (hi - lo) * (j + 1) / (n + 1) for j in range(n)]
        for lam, c in zip(lams, costs(lams)):
            if c > ppl_budget:
                hi = lam
                break
            lo, lo_cost = lam, c
    saturated = bool(top_cost <= ppl_budget)  # a numpy budget would give np.bool_
    return Calibration(hi if saturated else lo, top_cost if saturated else lo_cost, ppl_budget,
                       saturated, _path(path))


@dataclass(frozen=True)
class PerplexityInputs:
    """What every λ of a calibration shares (shipped once to each worker)."""

    group: tuple[Steerer, ...]
    texts: list[str]
    max_tokens: int
    batch_size: int
    progress: bool = False


def steered_perplexity(model: HookedTransformer, inputs: PerplexityInputs,
                       strength: float) -> pd.DataFrame:
    """Per-text perplexity under ``inputs.group`` at ``strength`` (an executor call)."""
    return perplexity(model, inputs.texts, *inputs.group, strength=strength,
                      max_tokens=inputs.max_tokens, batch_size=inputs.batch_size,
                      progress=inputs.progress)


def _bounded(group: tuple[Steerer, ...], max_strength: float | None) -> bool:
    return max_strength is not None or all(s.strength_range is not None for s in group)


def _top(group: tuple[Steerer, ...], max_strength: float | None) -> float:
    """The top of the search: the tightest upper bound the steerers allow, else λ=1."""
    bounds = [s.strength_range[1] for s in group if s.strength_range is not None]
    top = min(bounds) if bounds else 1.0
    if max_strength is not None:
        for s in group:
            s.check_strength(max_strength)
        top = min(top, max_strength) if bounds else max_strength
    if not math.isfinite(top) or top <= 0:
        raise ValueError(f"cannot calibrate: the largest allowed strength is {top}")
    return float(top)


def _path(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).sort_values("strength").reset_index(drop=True)


__all__ = ["Calibration", "Evaluation", "calibrate", "pareto_front", "sweep"]
