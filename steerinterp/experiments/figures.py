"""``steerinterp figures``: every figure in ``figures/`` regenerated from cached analysis
frames, computing (at a chosen size) only what is missing (:mod:`.registry` holds the sizes and
the cache, :mod:`.analyses` the analyses)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transformer_lens import HookedTransformer

from ..executors import Executor, LocalExecutor
from ..io import ensure_writable_dir
from . import analyses, analyses_lineas  # noqa: F401  (registers the analyses)
from .registry import ANALYSES, Context, _frames
from .sizes import FIGURE_SIZES, FigureSize

__all__ = ["ANALYSES", "FIGURE_SIZES", "FigureSize", "analysis_frames", "make_figures"]


@dataclass(frozen=True)
class FigureJob:
    """What every analysis of one ``figures`` call shares (shipped once to each worker)."""

    size: str
    cache: Path
    seed: int
    log: Callable[[str], None] = print


def analysis_frames(model: HookedTransformer, job: FigureJob, name: str) -> dict:
    """One analysis's frames, from the cache or computed and cached (an executor call; fitted
    steerers are shared through the cache folder, see ``load_or_fit``)."""
    compute, _, reads = ANALYSES[name]
    return _frames(Context(model, job.size, job.cache, job.seed, job.log), name, compute, reads)


def make_figures(model: HookedTransformer, out: str | Path = "figures", size: str = "default",
                 cache: str | Path | None = None, only: list[str] | None = None, seed: int = 0,
                 log: Callable[[str], None] = print,
                 executor: Executor | None = None) -> list[Path]:
    """Regenerate the figures of ``only`` (default: every analysis) into ``out``; returns the
    PNG paths. Frames are cached in ``cache`` (default ``results/figures/<model>-<size>``).
    The analyses' frames are computed on ``executor`` (default: here, one after another; on
    Ray, one analysis per worker at a time); the figures are drawn here."""
    from ..plots import save_figure

    if size not in FIGURE_SIZES:
        raise ValueError(f"unknown size {size!r}; sizes: {', '.join(FIGURE_SIZES)}")
    names = only or list(ANALYSES)
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise ValueError(f"unknown analysis {unknown}; known: {', '.join(ANALYSES)}")
    out = ensure_writable_dir(Path(out))
    cache = Path(cache or Path("results/figures") / f"{model.cfg.model_name.replace('/', '_')}"
                                                      f"-{size}")
    ex = executor if executor is not None else LocalExecutor()
    job = FigureJob(size, ensure_writable_dir(cache), seed, log if ex.name == "local" else print)

    def started(i: int) -> None:
        if ex.name != "local":  # a local analysis logs its own lines
            log(f"[figures] {names[i]}: on a {ex.name} worker")
    all_frames = ex.map(model, analysis_frames, [(name,) for name in names], job,
                        labels=[f"analysis {name}" for name in names], on_start=started)
    written = []
    for name, frames in zip(names, all_frames):
        for fig_name, (fig, frame) in ANALYSES[name][1](frames).items():
            written.append(save_figure(fig, frame, fig_name, out))
            log(f"[figures] wrote {written[-1]}")
    return written
