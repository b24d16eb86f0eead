"""When has LinEAS converged? Loss, held-out W2 and (optionally) toxicity/PPL along training,
for one or more schedule lengths (issue 12; LinEAS, Rodriguez et al., NeurIPS'25, §3).

A snapshot at step ``k`` of an ``S``-step schedule is not an ``k``-step fit (the cosine has not
decayed yet), so the question "what is the shortest schedule that matches the reference's 1000
steps" is answered by training each length in ``schedules`` in full and comparing their *end*
points; the snapshots inside each run show the shape of its curve.

Held-out W2 is :meth:`~steerinterp.steer.lineas.Lineas.heldout_w2` (per site, the mean over
units of the quantile-matched W2² between mean-pooled held-out source texts and the untouched
model's held-out target), averaged over sites: the training loss on data the fit never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from transformer_lens import HookedTransformer

from ..io import read_csv, write_csv
from ..steer import make

__all__ = ["checkpoints", "lineas_convergence"]


def checkpoints(steps: int, n: int = 6) -> list[int]:
    """About ``n`` steps spaced geometrically from steps/2^(n−1) to ``steps`` (distinct, ≥ 1)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return sorted({max(1, round(steps / 2 ** i)) for i in range(n)})


def lineas_convergence(model: HookedTransformer, source: Sequence[str], target: Sequence[str],
                       held_source: Sequence[str], held_target: Sequence[str],
                       schedules: Sequence[int] = (1000,), config: dict | None = None,
                       evaluate_at_end=None, log=print,
                       cache_dir: Path | None = None) -> dict[str, pd.DataFrame]:
    """Fit LinEAS (``config`` on top of the reference recipe) once per schedule length and
    measure it along the way.

    Returns ``lineas_curve`` (``schedule``, ``step``, ``lr``, ``loss``: every training step)
    and ``lineas_checkpoints`` (``schedule``, ``step``, ``end`` (the schedule's last step),
    ``train_loss`` (mean of the last ≤ 10 steps' loss), ``heldout_w2`` and ``heldout_w2_unsteered``
    (mean over sites), ``heldout_ratio`` (steered / unsteered), ``fit_seconds``; plus whatever
    ``evaluate_at_end(steerer) -> dict`` returns for the end point of each schedule, e.g.
    toxicity and PPL on calibration prompts).

    With ``cache_dir``, each schedule's two frames are written to ``cache_dir/{steps}/`` as it
    finishes and read back instead of refitting, so adding a schedule length to a finished
    comparison costs only the new fit. The caller keys ``cache_dir`` on everything else.
    """
    if not schedules or any(int(s) < 1 for s in schedules):
        raise ValueError(f"schedules must be positive step counts, got {list(schedules)}")
    curves, rows = [], []
    for steps in schedules:
        folder = None if cache_dir is None else Path(cache_dir) / str(int(steps))
        if folder is not None and (folder / "points.csv").exists():
            log(f"[convergence] lineas, {steps} steps: cached in {folder}")
            curves.append(read_csv(folder / "curve.csv", f"{steps}-step curve"))
            rows.extend(read_csv(folder / "points.csv", f"{steps}-step points")
                        .to_dict("records"))
            continue
        curve, points = _one_schedule(model, int(steps), source, target, held_source,
                                      held_target, config, evaluate_at_end, log)
        if folder is not None:  # curve first: points.csv marks the schedule finished
            write_csv(folder / "curve.csv", curve)
            write_csv(folder / "points.csv", pd.DataFrame(points))
        curves.append(curve)
        rows.extend(points)
    curve = pd.concat(curves, ignore_index=True)[["schedule", "step", "lr", "loss"]]
    return {"lineas_curve": curve, "lineas_checkpoints": pd.DataFrame(rows)}


def _one_schedule(model, steps, source, target, held_source, held_target, config,
                  evaluate_at_end, log) -> tuple[pd.DataFrame, list[dict]]:
    """One schedule's fit: its loss curve and a row per snapshot."""
    rows = []
    lin = make("lineas", **{**(config or {}), "steps": int(steps)})
    lin.snapshot_at = tuple(checkpoints(int(steps)))
    log(f"[convergence] lineas, {steps} steps")
    lin.fit(model, list(source), list(target))
    curve = lin.loss_frame().assign(schedule=int(steps))
    curve["step"] = curve["step"] + 1  # steps completed, as the snapshots count them
    for step in lin.snapshot_at:
        snap = lin.at_snapshot(step)
        w2 = snap.heldout_w2(model, list(held_source), list(held_target))
        row = {"schedule": int(steps), "step": step, "end": step == int(steps),
               "train_loss": float(curve["loss"].iloc[max(0, step - 10):step].mean()),
               "heldout_w2": float(w2["w2_steered"].mean()),
               "heldout_w2_unsteered": float(w2["w2_unsteered"].mean()),
               "fit_seconds": float(lin.provenance.fit_seconds)}
        row["heldout_ratio"] = row["heldout_w2"] / row["heldout_w2_unsteered"]
        if step == int(steps) and evaluate_at_end is not None:
            row.update(evaluate_at_end(snap))
        rows.append(row)
        log(f"[convergence]   step {step}: held-out W2 ratio {row['heldout_ratio']:.3f}")
    return curve, rows
