"""What every ``steerinterp`` command shares: the app objects, common options, model loading
and table printing. Command modules register on :data:`app`; nothing here imports them."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

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
EXECUTOR = typer.Option("local", help="Where the conditions run: local (this process) or ray "
                        "(Ray workers that each load the model; pip install "
                        "'steerinterp[distributed]').")
ADDRESS = typer.Option(None, help="Ray cluster for --executor ray (host:port, ray://host:port "
                       "or auto); default: a local Ray runtime on this machine.")
WORKERS = typer.Option(2, help="Ray workers (--executor ray); each holds one copy of the model.")
PROMPT_TOKENS = typer.Option(None, help="Longest prompt accepted, in tokens (default 64); a "
                             "longer one is an error, never silently cut.")


@contextmanager
def _executor(name: str, address: str | None, workers: int):
    """The executor the options name, closed (Ray workers stopped) when the command ends;
    made before the model loads, so a missing Ray is reported at once."""
    from ..executors import get_executor

    ex = get_executor(name, workers=workers, address=address)
    try:
        yield ex
    finally:
        ex.close()


def _load(model: str, device: str | None):
    from ..models import load_model

    with console().status(f"loading {model}"):
        return load_model(model, device=device)


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



SRC = "a built-in set (builtin:toxic; see `steerinterp sets`) or a .txt / .jsonl file"
STEERER = typer.Option(None, "--steerer", "-s",
                       help="A fitted steerer directory (from `steerinterp fit`); repeat to "
                            "compose several, applied in the order given.")
STEERER_REQUIRED = typer.Option(..., "--steerer", "-s",
                                help="A fitted steerer directory (from `steerinterp fit`); "
                                     "repeat to compose several, applied in the order given.")
STRENGTH = typer.Option(None, help="Strength λ for every steerer (default: each one's own, "
                                   "usually 1). Must lie in the method's range.")
SEED = typer.Option(0, help="Seed: which texts are drawn, and the per-prompt sampling seeds.")
N_BUILTIN = 100  # texts drawn from a built-in set when no count is given


def draw_n(name: str, n: int | None, builtin: int = N_BUILTIN) -> int | None:
    """How many texts to draw: ``n`` when given; else ``builtin`` from a built-in set and all
    of a user's file (``None``), so a 20-line file is never asked for 100."""
    from ..data import is_builtin

    if n is not None:
        return n
    return builtin if is_builtin(name) else None


def _steerers(model, paths: list[Path] | None):
    from ..steer import load_steerer

    return tuple(load_steerer(p, model) for p in (paths or []))


def _check_strength(steerers, strength: float | None) -> None:
    for s in steerers:
        if strength is not None:
            s.check_strength(strength)


def _log_line(msg: str) -> None:
    console().print(msg, markup=False, highlight=False)


def _options(items: list[str] | None) -> dict:
    import json

    out = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--option {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value  # a bare string, e.g. gate=relu
    return out


def _generation_settings(preset: str, samples, new_tokens, seed, batch_size,
                         max_prompt_tokens=None):
    from ..evaluate.generation import settings_for

    over = {k: v for k, v in {"samples": samples, "max_new_tokens": new_tokens,
                              "batch_size": batch_size,
                              "max_prompt_tokens": max_prompt_tokens}.items() if v is not None}
    return settings_for(preset, seed=seed, **over)


PRESET = typer.Option("default", help="Sampling preset: default (20 tokens, 2 samples, top-p "
                                      "0.9), act (AcT protocol: 32 tokens, top-p 0.3, "
                                      "repetition penalty 1.2), greedy.")
SAMPLES = typer.Option(None, help="Continuations per prompt (overrides the preset).")
NEW_TOKENS = typer.Option(None, help="New tokens per continuation (overrides the preset).")
BATCH = typer.Option(None, help="Prompts per generation batch (overrides the preset).")


def _log(msg: str) -> None:
    # markup=False: log lines start with "[figures]"/"[run]", which rich would eat as tags.
    console().print(msg, markup=False, highlight=False)


