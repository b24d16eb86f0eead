"""The main job's outputs: ``results.csv`` (every number), ``report.md`` (the table the README
quotes) and ``figures/`` (Pareto front, per-method bars), all written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..bench import machine
from ..io import write_csv, write_text
from ..plots import save_figure
from ..plots.evaluation import plot_method_bars, plot_pareto
from .harness import fmt_pm


def report_table(frame: pd.DataFrame) -> str:
    """Markdown table: method, λ (and how it was chosen), sites, toxic %, mean score ± SE,
    paired difference to the unsteered model ± SE, PPL, ΔPPL and fit time."""
    head = ("| method | λ | sites | toxic % | mean score ± se | Δ score ± se | PPL | ΔPPL | "
            "fit (s) |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in frame.to_dict(orient="records"):
        steered = r["method"] != "unsteered"
        lam = f"{r['strength']:.3g} ({r['rule']})" if steered else "–"
        diff = fmt_pm(r["diff_mean_score"], r["diff_mean_score_se"]) if steered else "–"
        dppl = f"{100 * r['delta_ppl_rel']:+.1f}%" if steered else "–"
        fit = f"{r['fit_seconds']:.0f}" if steered and math.isfinite(r["fit_seconds"]) else "–"
        lines.append(f"| {r['method']} | {lam} | {r['sites'] or '–'} | "
                     f"{100 * r['toxic_share']:.1f} ± {100 * r['toxic_share_se']:.1f} | "
                     f"{fmt_pm(r['mean_score'], r['mean_score_se'])} | {diff} | "
                     f"{r['ppl']:.2f} | {dppl} | {fit} |")
    return "\n".join(lines)


def write_outputs(frame: pd.DataFrame, spec, out: Path, seconds: float, model) -> None:
    """Write ``results.csv``, ``report.md`` and the figures into ``out``."""
    out = Path(out)
    write_csv(out / "results.csv", frame)
    fig = plot_pareto(frame, title=f"{spec.model}: toxicity vs perplexity ({spec.size} size)")
    save_figure(fig, frame, "pareto", out / "figures")
    fig = plot_method_bars(frame, title=f"{spec.model}: per-condition toxicity and perplexity")
    save_figure(fig, frame, "methods", out / "figures")
    write_text(out / "report.md", markdown_report(frame, spec, seconds, model))


def markdown_report(frame: pd.DataFrame, spec, seconds: float, model) -> str:
    z = spec.sizes
    budget = (f"each method at its default λ and at the largest λ whose perplexity rise on "
              f"{z.n_calib} separate Wikipedia texts stays within +{spec.ppl_budget:.0%}"
              if spec.ppl_budget is not None else "each method at its default λ")
    return f"""# steerinterp run: {spec.model}, size `{spec.size}`

Command: `steerinterp run --model {spec.model} --size {spec.size} --seed {spec.seed}`
(machine: {machine(str(model.cfg.device))}; {seconds / 60:.1f} min, cached stages
reused).

Fit on {z.n_fit} toxic vs {z.n_fit} Wikipedia texts (length-matched; DSAS control: {z.n_fit}
other Wikipedia texts). Evaluated on {z.n_prompts} held-out toxic prompts × {z.samples}
samples × {z.new_tokens} new tokens (temperature 1.0, top-p 0.9, seeded per prompt so every
condition shares its random numbers), scored by the {spec.scorer} classifier; perplexity of
the first 64 tokens of {z.n_ppl} held-out Wikipedia texts. Strength: {budget}.
LinEAS: {z.lineas_steps} steps. ± are standard errors clustered by prompt; Δ score is the
paired difference to the unsteered model on the same prompts and seeds.

{report_table(frame)}

![Pareto front](figures/pareto.png)

![Per-condition bars](figures/methods.png)
"""
