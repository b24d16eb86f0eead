"""``steerinterp fit | generate | evaluate | calibrate``: fit one steerer, generate and
evaluate with it, calibrate its strength."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (ADDRESS, BATCH, DEVICE, EXECUTOR, MODEL, N_BUILTIN, NEW_TOKENS, PRESET, PROMPT_TOKENS,
                     SAMPLES, SEED, SRC, STEERER, STEERER_REQUIRED, STRENGTH, _check_strength,
                     _generation_settings, _load, _log_line, _options, _print_dict,
                     _print_frame, _steerers, WORKERS, _executor, app, console, draw_n)

@app.command()
def fit(
    method: str = typer.Argument(..., help="Method name: aura, det0, damp, actadd, mean_shift, "
                                           "iti, linear_act, lineas, dsas."),
    source: str = typer.Option(None, help=f"Texts with the behaviour to remove: {SRC}. "
                                          "Without --source and --target: the toxicity fit "
                                          "sets of --fit-set."),
    fit_set: str = typer.Option("continuations", help="Toxicity fit-set kind used when no "
                                                      "--source/--target is given (see "
                                                      "`steerinterp sets`)."),
    target: str = typer.Option(None, help=f"Texts with the behaviour wanted: {SRC}."),
    control: str = typer.Option(None, help=f"DSAS only: neutral texts the gates should leave "
                                           f"alone: {SRC}."),
    base: Path = typer.Option(None, help="DSAS only: a fitted steerer directory to gate "
                                         "(default: DSAS fits its own base_method)."),
    sites: str = typer.Option(None, help="Sites, e.g. 'all.mlp_out,L3-5.attn_out' (default: "
                                         "the method's defaults for this model)."),
    n: int = typer.Option(None, help="Texts drawn from each set (default: all)."),
    option: list[str] = typer.Option(None, "--option", "-O",
                                     help="Method option KEY=VALUE, e.g. -O steps=200 "
                                          "(see the method's Config)."),
    match_lengths: bool = typer.Option(True, help="Length-match source and target."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the fitted steerer."),
    seed: int = SEED, model: str = MODEL, device: str = DEVICE,
) -> None:
    """Fit a steering METHOD from source (and target / control) texts and save it."""
    from ..data import length_match, load_texts
    from ..io import ensure_writable_dir
    from ..steer import load_steerer, make

    ensure_writable_dir(out.parent if out.parent != Path("") else Path("."))
    m = _load(model, device)
    opts = _options(option)
    if sites:
        opts["sites"] = sites
    if base is not None:
        opts["base"] = load_steerer(base, m)
    if source is None and target is not None:
        raise typer.BadParameter("--target needs --source (or give neither for the toxicity "
                                 "fit sets)")
    if source is None:
        from ..experiments.fitsets import toxicity_fit_sets

        src, tgt = toxicity_fit_sets(m, n=n or 64, kind=fit_set, seed=seed, log=_log_line)
    else:
        src = load_texts(source, n=n, seed=seed)
        tgt = load_texts(target, n=n, seed=seed) if target else None
    if source is not None and tgt is not None and match_lengths:
        src, tgt = length_match(m, src, tgt)
    steerer = make(method, **opts)
    ctl = load_texts(control, n=n, seed=seed) if control else None
    steerer.fit(m, src, tgt, control=ctl)
    steerer.save(out)
    _print_fit(steerer, method, m.cfg.model_name, out)


def _print_fit(steerer, method: str, model_name: str, out: Path) -> None:
    """The fit summary; for loop-trained steerers (LinEAS, E2E-DSAS) whether the loss
    plateaued (:func:`steerinterp.train.plateau`), with a warning when it did not."""
    from ..train import plateau

    prov = steerer.provenance
    info = {"method": method, "sites": len(steerer.sites), "n_source": prov.n_source,
            "n_target": prov.n_target, "fit_seconds": prov.fit_seconds}
    curve = getattr(steerer, "loss_curve", None)
    flat = plateau(curve) if curve else None
    if flat:
        info.update(final_loss=curve[-1]["loss"], loss_plateaued=flat["converged"],
                    loss_fall_at_end=flat["rel_change"])
    _print_dict({**info, "saved": str(out)}, f"fitted {method} on {model_name}")
    if flat and not flat["converged"]:
        console().print(f"[yellow]warning: the {method} loss had not plateaued: it changed by "
                        f"{-flat['rel_change']:+.1%} over its last {flat['window']} steps (the "
                        f"last {flat['share']:.0%} of the lr budget; plateau: within "
                        f"±{flat['tol']:.0%}). Consider more steps or a higher lr "
                        "(-O steps=..., -O lr=...).[/yellow]")


@app.command()
def generate(
    prompts: str = typer.Option(..., help=f"Prompts: {SRC}. Every line of a .txt is a prompt."),
    n: int = typer.Option(None, help="Prompts drawn (default: all)."),
    steerer: list[Path] = STEERER, strength: float = STRENGTH,
    preset: str = PRESET, samples: int = SAMPLES, new_tokens: int = NEW_TOKENS,
    batch_size: int = BATCH, max_prompt_tokens: int = PROMPT_TOKENS,
    score: bool = typer.Option(True, help="Score continuations with the Jigsaw classifier."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the samples as JSONL here."),
    seed: int = SEED, model: str = MODEL, device: str = DEVICE,
) -> None:
    """Sample continuations of prompts under the given steerers (paired seeds per prompt)."""
    from ..data import load_prompts
    from ..evaluate.generation import generate as gen
    from ..evaluate.generation import save_generations
    from ..evaluate.scorers import load_scorer
    from ..io import ensure_writable_dir

    if out is not None:
        ensure_writable_dir(out.parent)
    texts = load_prompts(prompts, n=n, seed=seed)
    m = _load(model, device)
    steerers = _steerers(m, steerer)
    _check_strength(steerers, strength)
    settings = _generation_settings(preset, samples, new_tokens, seed, batch_size,
                                    max_prompt_tokens)
    df = gen(m, texts, *steerers, strength=strength, settings=settings,
             scorer=load_scorer("jigsaw", device=m.cfg.device) if score else None)
    if out is not None:
        save_generations(df, out)
    cols = [c for c in ("prompt_id", "sample", "score", "continuation") if c in df.columns]
    _print_frame(df[cols].head(20), f"{len(df)} continuations" + (f" -> {out}" if out else ""))


@app.command()
def evaluate(
    prompts: str = typer.Option("builtin:toxic_prompts", help=f"Held-out prompts: {SRC}."),
    ppl_texts: str = typer.Option("builtin:wiki_ppl", help=f"Perplexity texts: {SRC}."),
    n_prompts: int = typer.Option(None, help=f"Prompts drawn (default: {N_BUILTIN} of a "
                                  "built-in set, every line of a file)."),
    n_ppl: int = typer.Option(None, help=f"Perplexity texts drawn (default: {N_BUILTIN} of a "
                              "built-in set, all of a file)."),
    steerer: list[Path] = STEERER, strength: float = STRENGTH,
    preset: str = PRESET, samples: int = SAMPLES, new_tokens: int = NEW_TOKENS,
    batch_size: int = BATCH, max_prompt_tokens: int = PROMPT_TOKENS,
    baseline: bool = typer.Option(True, help="Also evaluate the unsteered model on the same "
                                             "prompts and seeds and report paired differences."),
    out: Path = typer.Option(..., "--out", "-o", help="JSON file for the numbers."),
    seed: int = SEED, model: str = MODEL, device: str = DEVICE,
) -> None:
    """Toxicity of continuations and perplexity of Wikipedia text under the steerers."""
    from ..data import load_prompts, load_texts
    from ..evaluate.harness import EvalSettings, compare
    from ..evaluate.harness import evaluate as run_eval
    from ..io import ensure_writable_dir, write_json

    ensure_writable_dir(out.parent)
    texts = load_prompts(prompts, n=draw_n(prompts, n_prompts), seed=seed)
    ppl = load_texts(ppl_texts, n=draw_n(ppl_texts, n_ppl), seed=seed)
    m = _load(model, device)
    steerers = _steerers(m, steerer)
    _check_strength(steerers, strength)
    settings = EvalSettings(generation=_generation_settings(preset, samples, new_tokens, seed,
                                                            batch_size, max_prompt_tokens))
    result = run_eval(m, *steerers, strength=strength, prompts=texts, ppl_texts=ppl,
                      settings=settings, condition="steered" if steerers else "unsteered")
    numbers = result.summary()
    if baseline and steerers:
        base = run_eval(m, prompts=texts, ppl_texts=ppl, settings=settings)
        row = compare([base, result]).set_index("condition").loc["steered"].to_dict()
        numbers = {**numbers, **{k: v for k, v in row.items() if k not in numbers}}
        numbers["unsteered"] = base.summary()
    numbers.update(model=m.cfg.model_name, steerers=[str(p) for p in steerer or []],
                   settings=settings.to_dict())
    write_json(out, numbers)
    _print_dict({k: v for k, v in numbers.items() if not isinstance(v, dict)},
                f"evaluate -> {out}")


@app.command()
def calibrate(
    steerer: list[Path] = STEERER_REQUIRED,
    ppl_texts: str = typer.Option("builtin:wiki_control", help=f"Calibration texts: {SRC}. "
                                  "Keep them apart from the texts you evaluate on."),
    n: int = typer.Option(None, help="Calibration texts drawn (default: 64 of a built-in set, "
                          "all of a file)."),
    budget: float = typer.Option(0.05, help="Allowed relative perplexity increase (0.05 = +5%)."),
    max_strength: float = typer.Option(None, help="Upper end of the search for unbounded "
                                                  "methods (default: double from 1)."),
    seed: int = SEED, model: str = MODEL, device: str = DEVICE,
    executor: str = EXECUTOR, address: str = ADDRESS, workers: int = WORKERS,
) -> None:
    """The strongest λ whose perplexity increase stays within the budget (with --executor
    ray, each round tries one λ per worker)."""
    from ..data import load_texts
    from ..evaluate.sweep import calibrate as cal

    with _executor(executor, address, workers) as ex:
        m = _load(model, device)
        steerers = _steerers(m, steerer)
        if not steerers:
            raise typer.BadParameter("calibrate needs at least one --steerer")
        texts = load_texts(ppl_texts, n=draw_n(ppl_texts, n, 64), seed=seed)
        result = cal(m, steerers, texts, ppl_budget=budget, max_strength=max_strength,
                     executor=ex)
    _print_frame(result.path, repr(result))


