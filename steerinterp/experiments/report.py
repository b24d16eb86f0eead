"""The main job's outputs: ``results.csv`` (every number), ``report.md`` (the table the README
quotes) and ``figures/`` (Pareto front, per-method bars), all written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..machine import machine
from ..io import write_csv, write_text
from ..plots import save_figure
from ..plots.evaluation import plot_method_bars, plot_pareto
from ..evaluate.harness import fmt_pm


# The papers' number for each method at their setting, to read beside ours (METHODS.md §10).
# Their toxicity is the share of continuations the RoBERTa classifier flags; ours the Jigsaw
# BiLSTM's mean score and share, on a 270M model: compare the ratios, not absolute values.
PAPER = {
    "aura": "2.0× toxic share, +1.4% PPL (AcT Tab. 2, Gemma2-2B, MLP)",
    "mean_shift": "7.7×, +1.7% PPL (Mean-AcT, AcT Tab. 2, Gemma2-2B, post-LN, λ=1)",
    "iti": "5.6×, +6.6% PPL (ITI-c, AcT Tab. 2, Gemma2-2B, attention, λ=8)",
    "linear_act": "7.5×, +5.8% PPL (AcT Tab. 2, Gemma2-2B, post-LN, λ=1); 2.5× in LinEAS Tab. 1",
    "lineas": "5.5×, +4.5% PPL, MMLU −0.8 (LinEAS Tab. 1, Gemma2-2B, λ=1)",
}


def _paper(method: str) -> str:
    base = method.split("+", 1)[-1] if method.startswith("dsas+") else method
    if method.startswith("dsas+"):
        return "– (DSAS: no verified number; should be at or below its base's front)"
    return PAPER.get(base, "–")


def report_table(frame: pd.DataFrame) -> str:
    """Markdown table: method, λ (and how it was chosen), toxic %, mean score ± SE, the
    toxicity ratio (unsteered / steered mean score; paired), PPL, ΔPPL, zero-shot accuracy
    (when measured) and the papers' number for the method."""
    has_acc = "accuracy" in frame.columns
    acc_head = " | zero-shot acc (Δ)" if has_acc else ""
    head = (f"| method | λ | toxic % | mean score ± se | tox. cut | PPL | ΔPPL{acc_head} | "
            f"paper |\n|---|---|---|---|---|---|---|{'---|' if has_acc else ''}---|")
    lines = [head]
    for r in frame.to_dict(orient="records"):
        steered = r["method"] != "unsteered"
        lam = f"{r['strength']:.3g} ({r['rule']})" if steered else "–"
        ratio = r.get("ratio_mean_score", math.nan)
        cut = f"{1 / ratio:.2f}× (z {abs(r['z']):.1f})" if steered and ratio > 0 else "–"
        dppl = f"{100 * r['delta_ppl_rel']:+.1f}%" if steered else "–"
        acc = ""
        if has_acc:
            acc = f" | {100 * r['accuracy']:.1f}"
            if steered and math.isfinite(r.get("diff_accuracy", math.nan)):
                acc += (f" ({100 * r['diff_accuracy']:+.1f} ± "
                        f"{100 * r['diff_accuracy_se']:.1f})")
        lines.append(f"| {r['method']} | {lam} | "
                     f"{100 * r['toxic_share']:.1f} ± {100 * r['toxic_share_se']:.1f} | "
                     f"{fmt_pm(r['mean_score'], r['mean_score_se'])} | {cut} | "
                     f"{r['ppl']:.2f} | {dppl}{acc} | {_paper(r['method']) if steered else '–'} |")
    return "\n".join(lines)


def sites_table(frame: pd.DataFrame) -> str:
    """Which sites and how long each method's fit took."""
    rows = frame[frame["method"] != "unsteered"].drop_duplicates("method")
    lines = ["| method | sites | fit (s) |", "|---|---|---|"]
    for r in rows.to_dict(orient="records"):
        fit = f"{r['fit_seconds']:.0f}" if math.isfinite(r["fit_seconds"]) else "–"
        lines.append(f"| {r['method']} | {r['sites'] or '–'} | {fit} |")
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


def _flags(spec) -> str:
    flags = ""
    if getattr(spec, "sampling", "default") != "default":
        flags += f" --sampling {spec.sampling}"
    if spec.fit_set != "continuations":
        flags += f" --fit-set {spec.fit_set}"
    return flags


def _sampling(spec) -> str:
    if getattr(spec, "sampling", "default") == "act":
        return "1 sample × 32 new tokens (AcT's protocol: top-p 0.3, repetition penalty 1.2"
    z = spec.sizes
    return f"{z.samples} samples × {z.new_tokens} new tokens (temperature 1.0, top-p 0.9"


def markdown_report(frame: pd.DataFrame, spec, seconds: float, model) -> str:
    z = spec.sizes
    budget = (f"each method at its default λ and at the largest λ whose perplexity rise on "
              f"{z.n_calib} separate Wikipedia texts stays within +{spec.ppl_budget:.0%}"
              if spec.ppl_budget is not None else "each method at its default λ")
    return f"""# steerinterp run: {spec.model}, size `{spec.size}`

Command: `steerinterp run --model {spec.model} --size {spec.size} --seed {spec.seed}{_flags(spec)}`
(machine: {machine(str(model.cfg.device))}; {seconds / 60:.1f} min, cached stages
reused).

Fit on {z.n_fit} + {z.n_fit} texts of the `{spec.fit_set}` toxicity fit sets (`steerinterp
sets`; DSAS control: {z.n_fit} Wikipedia texts). Evaluated on {z.n_prompts} held-out toxic
prompts × {_sampling(spec)}, seeded per prompt so every condition shares its random numbers),
scored by the {spec.scorer} classifier; perplexity of
the first 64 tokens of {z.n_ppl} held-out Wikipedia texts. Strength: {budget}.
LinEAS: {z.lineas_steps} steps. ± are standard errors clustered by prompt; Δ score is the
paired difference to the unsteered model on the same prompts and seeds.

{report_table(frame)}

Tox. cut = unsteered / steered mean Jigsaw score on the same prompts and seeds (z of the
paired difference). "paper" = the method's number in its paper at the paper's setting (another
model, the RoBERTa scorer): compare ratios and PPL costs, not absolute values.

{sites_table(frame)}

![Pareto front](figures/pareto.png)

![Per-condition bars](figures/methods.png)
"""
