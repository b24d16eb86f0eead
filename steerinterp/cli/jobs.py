"""``steerinterp sweep | run | demo | figures | train-sae | fitsets``: the jobs that evaluate
many conditions (``demo`` is the main job at watching size, what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (ADDRESS, DEVICE, EXECUTOR, MODEL, PROMPT_TOKENS, WORKERS, _executor, _load,
                     _log, _options, _print_frame, app, console)

@app.command()
def sweep(
    steerer: list[Path] = typer.Option(..., "--steerer", "-s",
                                       help="Fitted steerer directories; each is swept alone."),
    strengths: str = typer.Option("0.25,0.5,0.75,1", help="Comma-separated strengths λ."),
    prompts: str = typer.Option("builtin:toxic_prompts", help="Held-out prompts (SRC)."),
    ppl_texts: str = typer.Option("builtin:wiki_ppl", help="Perplexity texts (SRC)."),
    n_prompts: int = typer.Option(None, help="Prompts drawn (default: 100 of a built-in set, "
                                  "every line of a file)."),
    n_ppl: int = typer.Option(None, help="Perplexity texts drawn (default: 100 of a built-in "
                              "set, all of a file)."),
    samples: int = typer.Option(None, help="Continuations per prompt (default 2)."),
    new_tokens: int = typer.Option(None, help="New tokens per continuation (default 20)."),
    max_prompt_tokens: int = PROMPT_TOKENS,
    out: Path = typer.Option(..., "--out", "-o", help="Folder: sweep.csv, pareto figure, "
                                                      "and each condition (resumable)."),
    seed: int = typer.Option(0), model: str = MODEL, device: str = DEVICE,
    executor: str = EXECUTOR, address: str = ADDRESS, workers: int = WORKERS,
) -> None:
    """Evaluate each steerer at each strength (and the unsteered model): a tidy CSV and the
    toxicity/perplexity Pareto front. With --executor ray the conditions run on Ray workers
    (same CSV)."""
    from .common import _generation_settings, _steerers, draw_n
    from ..data import load_prompts, load_texts
    from ..evaluate.harness import EvalSettings
    from ..evaluate.sweep import pareto_front
    from ..evaluate.sweep import sweep as run_sweep
    from ..io import ensure_writable_dir, write_csv
    from ..plots import save_figure
    from ..plots.evaluation import plot_pareto

    ensure_writable_dir(out)
    lams = _parse_strengths(strengths)
    with _executor(executor, address, workers) as ex:
        m = _load(model, device)
        loaded = _steerers(m, steerer)
        names = _unique_names([p.name for p in steerer])
        settings = EvalSettings(generation=_generation_settings("default", samples, new_tokens,
                                                                seed, None, max_prompt_tokens))
        frame = run_sweep(m, dict(zip(names, loaded)), lams,
                          load_prompts(prompts, draw_n(prompts, n_prompts), seed),
                          load_texts(ppl_texts, n=draw_n(ppl_texts, n_ppl), seed=seed),
                          settings, cache_dir=out / "conditions", executor=ex)
    write_csv(out / "sweep.csv", frame)
    save_figure(plot_pareto(frame), frame, "pareto", out)
    cols = ["condition", "strength", "toxic_share", "mean_score", "mean_score_se", "ppl"]
    _print_frame(frame[cols], f"sweep -> {out}/sweep.csv")
    _print_frame(pareto_front(frame)[cols], "Pareto front (mean score vs PPL)")


def _parse_strengths(text: str) -> list[float]:
    try:
        lams = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--strengths must be comma-separated numbers, got {text!r}")
    if not lams:
        raise typer.BadParameter("--strengths is empty")
    return lams


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


@app.command()
def run(
    model: str = MODEL,
    size: str = typer.Option("default", help="smoke (seconds, tests) | demo (`steerinterp demo`'s"
                                             " size; measured on a 2-core CPU: 20 min with the "
                                             "+5% rows, 12.6-17 min at λ = 1 only) | "
                                             "default (measured on a 2-core CPU: "
                                             "28 min for aura, mean_shift, linear_act, "
                                             "dsas+linear_act; LinEAS adds ~12 min of "
                                             "training) | paper (the papers' sizes)."),
    methods: str = typer.Option(None, help="Comma-separated subset of: aura, det0, mean_shift, "
                                           "iti, linear_act, lineas, dsas+linear_act, "
                                           "dsas+lineas (default: all)."),
    budget: float = typer.Option(0.05, help="Also evaluate each method at the largest λ whose "
                                            "perplexity rise on calibration text stays within "
                                            "this budget (0 to skip)."),
    fit_set: str = typer.Option("continuations", help="Toxicity fit sets: continuations (the "
                                                      "model's own toxic vs clean continuations "
                                                      "of toxic prompts), paired, mixed, wiki "
                                                      "(see `steerinterp sets`)."),
    out: Path = typer.Option(None, "--out", "-o", help="Results folder (default: "
                                                       "results/run/<model>-<size>)."),
    fresh: bool = typer.Option(False, help="Start over instead of resuming a run in --out."),
    seed: int = typer.Option(0, help="Seed for the fit/eval draws and sampling."),
    sampling: str = typer.Option("default", help="Generation protocol: default (temperature "
                                                 "1, top-p 0.9, the size's tokens and samples)"
                                                 " or act (AcT's: 32 tokens, top-p 0.3, "
                                                 "repetition penalty 1.2, 1 sample)."),
    device: str = DEVICE,
    executor: str = EXECUTOR, address: str = ADDRESS, workers: int = WORKERS,
) -> None:
    """The main job: fit every method on the built-in sets, evaluate each and the unsteered
    model on held-out prompts and Wikipedia text, and write results.csv, report.md and
    figures. Re-running resumes from what was saved. With --executor ray the calibrations
    and conditions run on Ray workers (fits stay here)."""
    from ..experiments.job import METHODS, JobSpec, run_job
    from ..io import ensure_writable_dir

    chosen = tuple(m.strip() for m in methods.split(",")) if methods else tuple(METHODS)
    spec = JobSpec(model=model, size=size, methods=chosen, seed=seed, fit_set=fit_set,
                   ppl_budget=budget if budget and budget > 0 else None, sampling=sampling)
    out = out or Path("results/run") / f"{model.replace('/', '_')}-{size}"
    ensure_writable_dir(out)
    with _executor(executor, address, workers) as ex:
        m = _load(model, device)
        frame = run_job(m, spec, out, fresh=fresh, log=_log, executor=ex)
    cols = ["condition", "toxic_pct", "mean_score", "mean_score_se", "ppl", "fit_seconds"]
    _print_frame(frame[cols], f"{model} ({size}) -> {out}/report.md")


@app.command()
def demo(
    model: str = MODEL,
    out: Path = typer.Option(None, "--out", "-o", help="Results folder (default: "
                                                       "results/demo/<model>-<size>)."),
    seed: int = typer.Option(0, help="Seed for the fit/eval draws and sampling."),
    size: str = typer.Option("demo", help="Job size (`run --help`); smoke for a tiny model."),
    fit_set: str = typer.Option("continuations", help="Toxicity fit sets (tiny random models "
                                                      "need 'wiki')."),
    budget: float = typer.Option(0.0, help="Also evaluate each method at the largest λ within "
                                           "this perplexity budget on calibration text, e.g. "
                                           "0.05 (measured: 20 min in all); 0: λ = 1 only."),
    device: str = DEVICE,
) -> None:
    """The main job at watching size (what `make demo` runs): AurA, Linear-AcT, LinEAS (250
    steps, converged) and DSAS over Linear-AcT, fitted on 32 + 32 texts, each evaluated on 40
    held-out prompts at the papers' λ = 1; prints the results table. Measured on gemma-3-270m
    on a 2-core CPU: 12 min 35 s (LinEAS's converged fit 8.3 min of it); 17 min in an earlier
    session on a slower day of the same machine. `run --size demo`
    is the same with the +5% PPL rows. Resumes like `run`."""
    from ..experiments.job import DEMO_METHODS, JobSpec, run_job
    from ..io import ensure_writable_dir

    spec = JobSpec(model=model, size=size, methods=DEMO_METHODS, seed=seed, fit_set=fit_set,
                   ppl_budget=budget if budget > 0 else None)
    out = out or Path("results/demo") / f"{model.replace('/', '_')}-{size}"
    ensure_writable_dir(out)
    m = _load(model, device)
    frame = run_job(m, spec, out, log=_log, progress=False)
    _print_frame(results_table(frame), f"{model} ({size}, seed {seed}): held-out prompts")
    console().print(f"report: {out / 'report.md'}")


def results_table(frame):
    """The run's frame as the terminal shows it: method, λ, toxic %, mean score ± SE, PPL,
    ΔPPL and zero-shot accuracy (when measured)."""
    import pandas as pd

    t = pd.DataFrame({"method": frame["method"],
                      "λ": ["" if x != x else f"{x:.3g}" for x in frame["strength"]],
                      "toxic %": (100 * frame["toxic_share"]).round(1),
                      "mean score": [f"{m:.3f} ± {e:.3f}" for m, e in
                                     zip(frame["mean_score"], frame["mean_score_se"])],
                      "PPL": frame["ppl"].round(2),
                      "ΔPPL": [f"{d:+.1%}" if d == d else "" for d in frame["delta_ppl_rel"]]})
    if "accuracy" in frame and frame["accuracy"].notna().any():
        t["accuracy"] = (100 * frame["accuracy"]).round(1)
    return t


@app.command()
def figures(
    model: str = MODEL,
    size: str = typer.Option("default", help="quick (tests, tiny models) | default (the "
                                             "committed figures)."),
    only: str = typer.Option(None, help="Comma-separated analyses: auroc, sparsity, "
                                        "aura_lineas, token_scales, sae, attribution, "
                                        "diagnosis, diagnosis_lineas, fronts, "
                                        "lineas_convergence (default: all)."),
    out: Path = typer.Option(Path("figures"), "--out", "-o", help="Figures folder."),
    cache: Path = typer.Option(None, help="Where analysis frames and fitted steerers are "
                                          "cached (default: results/figures/<model>-<size>)."),
    seed: int = typer.Option(0), device: str = DEVICE,
    executor: str = EXECUTOR, address: str = ADDRESS, workers: int = WORKERS,
) -> None:
    """Regenerate every analysis figure (PNG + the CSV it was drawn from) from cached frames,
    computing what is missing (with --executor ray, the analyses on Ray workers)."""
    from ..experiments.figures import make_figures
    from ..io import ensure_writable_dir

    ensure_writable_dir(out)
    with _executor(executor, address, workers) as ex:
        m = _load(model, device)
        paths = make_figures(m, out, size=size, cache=cache, seed=seed,
                             only=[s.strip() for s in only.split(",")] if only else None,
                             log=_log, executor=ex)
    console().print(f"{len(paths)} figures in {out}")


@app.command(name="train-sae")
def train_sae_cmd(
    site: str = typer.Option(..., help="Site the SAE reads, e.g. L9.ln2 or L6.resid_post."),
    size: str = typer.Option("real", help="quick (seconds, tests) | real (for the figures)."),
    seed: int = typer.Option(0), model: str = MODEL, device: str = DEVICE,
) -> None:
    """Train (once; cached and reused) a sae-lens SAE on the model's activations at SITE."""
    from ..analysis.sae_train import sae_quality, train_sae
    from ..data import load_texts
    from ..sites import Site

    m = _load(model, device)
    parsed = Site.parse(site).validate(m)
    sae = train_sae(m, parsed, size=size, seed=seed)
    # Quality on text the SAE never saw: the evaluation prompts and perplexity passages.
    held = load_texts("toxic_prompts", n=32) + load_texts("wiki_ppl")[:32]
    q = sae_quality(m, sae, held)
    console().print(f"SAE at {parsed}: d_in {sae.cfg.d_in}, d_sae {sae.cfg.d_sae}; on "
                    f"{q['n_tokens']} held-out tokens (32 toxic prompts + 32 Wikipedia "
                    f"passages): variance explained {q['fve']:.3f}, L0 {q['l0']:.1f}, "
                    f"latents silent on them {q['dead_share']:.1%}", markup=False)


@app.command()
def fitsets(
    compare: bool = typer.Option(False, help="Also compare every fit-set kind on the "
                                             "calibration split (toxicity cut at +5% PPL, PPL "
                                             "at λ = 1) and write fitsets.csv."),
    n: int = typer.Option(64, help="Texts per side of each fit set."),
    n_prompts: int = typer.Option(96, help="Calibration prompts for --compare."),
    kind: list[str] = typer.Option(None, "--kind", help="Fit-set kinds for --compare "
                                                         "(repeatable; default: all)."),
    option: list[str] = typer.Option(None, "--option", "-O",
                                     help="Map option KEY=VALUE for --compare, e.g. "
                                          "-O causal_target=unsteered (repeatable)."),
    export: Path = typer.Option(None, help="Also write the continuation pool to this .csv.gz "
                                           "(how the default model's packaged pool is made)."),
    out: Path = typer.Option(Path("results/fitsets"), "--out", "-o",
                             help="Folder for --compare (resumable)."),
    seed: int = typer.Option(0), model: str = MODEL, device: str = DEVICE,
) -> None:
    """Build the toxicity fit sets (samples and scores the model's continuations of the toxic
    fit prompts once; cached) and print how many toxic / clean texts the pool has."""
    from ..experiments.fitsets import KINDS, POOL_COLUMNS, continuation_pool, split_pool
    from ..experiments.fitset_choice import METHODS
    from ..io import write_csv
    from ..steer import make

    unknown = sorted(set(kind or ()) - set(KINDS))
    if unknown:  # refused before the model loads or the pool is sampled
        raise typer.BadParameter(f"unknown fit-set kind(s) {unknown}; kinds: "
                                 f"{', '.join(KINDS)}", param_hint="--kind")
    opts = _options(option)
    for method in METHODS:
        make(method, **opts)
    m = _load(model, device)
    pool = split_pool(continuation_pool(m, log=_log))
    counts = pool["side"].replace("", "neither").value_counts()
    _log(f"[fitsets] {len(pool)} continuations of {pool['prompt_id'].nunique()} prompts: "
         f"{counts.get('source', 0)} toxic (source), {counts.get('target', 0)} clean (target), "
         f"{counts.get('neither', 0)} in between")
    if export is not None:
        write_csv(export, pool[list(POOL_COLUMNS)])
        _log(f"[fitsets] wrote {export}")
    if compare:
        from ..experiments.fitset_choice import compare_fit_sets

        frame = compare_fit_sets(m, kinds=tuple(kind or KINDS), n=n, n_prompts=n_prompts,
                                 seed=seed, folder=out, options=opts, log=_log)
        cols = ["kind", "method", "options", "strength", "delta_ppl_rel_at_1", "mean_score",
                "ratio_mean_score", "delta_ppl_rel"]
        _print_frame(frame[cols], f"fit sets on {model}: calibration split -> {out}")
