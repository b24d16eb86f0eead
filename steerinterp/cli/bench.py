"""``steerinterp bench collect | steer | auroc | lineas | generate | sweep | gpu-check``: benchmarks, each a ratio
against a baseline measured in the same run."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import ADDRESS, DEVICE, MODEL, WORKERS, _load, _print_dict, _print_frame, bench_app

@bench_app.command(name="collect")
def bench_collect_cmd(
    model: str = MODEL, n: int = typer.Option(256, help="Number of sentences."),
    sites: str = typer.Option("all.attn_out,all.mlp_out", help="Sites to collect."),
    batch_size: int = typer.Option(16), max_tokens: int = typer.Option(64),
    repeats: int = typer.Option(3), device: str = DEVICE,
    out: Path = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """Mean-pooled collection vs plain forward passes over the same batches (ratio, memory)."""
    from ..bench.collect import bench_collect
    from ..data import load_texts

    m = _load(model, device)
    texts = load_texts("wiki_target", n=n, seed=0)
    result = bench_collect(m, texts, sites, batch_size=batch_size, max_tokens=max_tokens,
                           repeats=repeats)
    _report(result, "bench collect", out)


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
    from ..bench.steer import bench_steer, summarize_steer

    m = _load(model, device)
    df = bench_steer(m, methods=methods.split(",") if methods else None, n_fit=n_fit,
                     n_prompts=prompts, new_tokens=new_tokens, repeats=repeats)
    first = df.iloc[0]
    _print_frame(summarize_steer(df),
                 f"bench steer: {first.model}, {prompts} prompts × {new_tokens} new tokens, "
                 f"greedy, KV cache, median of {repeats} — {first.machine}")
    if out is not None:
        from ..io import write_json
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
    from ..bench.steer import bench_auroc

    m = _load(model, device)
    result = bench_auroc(m, n=n, subset=subset, repeats=repeats)
    _report(result, "bench auroc", out)


@bench_app.command(name="lineas")
def bench_lineas_cmd(
    model: str = MODEL, n: int = typer.Option(32, help="Source (= target) texts per step."),
    repeats: int = typer.Option(5), device: str = DEVICE,
    fit_set: str = typer.Option("continuations", help="Fit-set kind (tiny models: wiki)."),
    out: Path = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """One LinEAS training step vs the model's own forward + backward on the same batch, and
    the wall time to a converged fit (the measured schedule × the step)."""
    from ..bench.train import bench_lineas

    result = bench_lineas(_load(model, device), n=n, repeats=repeats, fit_set=fit_set)
    _report(result, "bench lineas", out)


@bench_app.command(name="generate")
def bench_generate_cmd(
    model: str = MODEL, prompts: int = typer.Option(8, help="toxic_prompts in the batch."),
    new_tokens: int = typer.Option(32, help="Greedy tokens generated per prompt."),
    repeats: int = typer.Option(3), device: str = DEVICE,
    out: Path = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """The project's KV-cached decode loop vs TransformerLens ``generate`` (same tokens)."""
    from ..bench.generate import bench_generate

    result = bench_generate(_load(model, device), n_prompts=prompts, new_tokens=new_tokens,
                            repeats=repeats)
    _report(result, "bench generate", out)


@bench_app.command(name="sweep")
def bench_sweep_cmd(
    model: str = typer.Option("tiny-gpt2", "--model", "-m", help="Model (default: the tiny "
                              "one the executor tests use)."),
    prompts: int = typer.Option(16, help="toxic_prompts per condition."),
    new_tokens: int = typer.Option(16, help="New tokens per continuation (2 samples)."),
    workers: int = WORKERS, address: str = ADDRESS, device: str = DEVICE,
    out: Path = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """The same 8-condition sweep locally and on Ray workers: wall times and the ratio."""
    from ..bench.sweep import bench_sweep

    result = bench_sweep(_load(model, device), n_prompts=prompts, new_tokens=new_tokens,
                         workers=workers, address=address)
    _report(result, "bench sweep", out)


@bench_app.command(name="gpu-check")
def gpu_check_cmd(
    model: str = MODEL, device: str = typer.Option("cuda", help="The GPU to check."),
    schedules: str = typer.Option("250,1000", help="LinEAS schedules timed (steps)."),
    fit_set: str = typer.Option("continuations", help="Fit-set kind (tiny models: wiki)."),
    out: Path = typer.Option(Path("results/gpu_check.json"), help="Where the JSON goes."),
) -> None:
    """On a GPU machine: the method contract on the GPU, LinEAS fit times (reference recipe)
    and steered generation throughput, in one JSON file (`make gpu-check`)."""
    from ..bench.gpu_check import check_device, gpu_check

    check_device(device)
    steps = tuple(int(s) for s in schedules.split(","))
    tests = Path(__file__).resolve().parents[2] / "tests"
    _report(gpu_check(_load(model, device), tests, steps, fit_set=fit_set), "gpu check", out)


def _report(result: dict, title: str, out: Path | None) -> None:
    """Print a benchmark's result; with ``out``, also write it as JSON there."""
    _print_dict(result, title)
    if out is not None:
        from ..io import write_json
        write_json(out, result)
