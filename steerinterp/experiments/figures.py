"""``steerinterp figures``: every figure in ``figures/`` regenerated from cached analysis
frames, computing (at a chosen size) only what is missing (:mod:`.registry` holds the sizes and
the cache, :mod:`.analyses` the analyses)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformer_lens import HookedTransformer

from ..io import ensure_writable_dir
from . import analyses  # noqa: F401  (registers the analyses)
from .registry import ANALYSES, Context, _frames
from .sizes import FIGURE_SIZES, FigureSize

__all__ = ["ANALYSES", "FIGURE_SIZES", "FigureSize", "make_figures"]


def make_figures(model: HookedTransformer, out: str | Path = "figures", size: str = "default",
                 cache: str | Path | None = None, only: list[str] | None = None, seed: int = 0,
                 log: Callable[[str], None] = print) -> list[Path]:
    """Regenerate the figures of ``only`` (default: every analysis) into ``out``; returns the
    PNG paths. Frames are cached in ``cache`` (default ``results/figures/<model>-<size>``)."""
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
    ctx = Context(model, size, ensure_writable_dir(cache), seed, log)
    written = []
    for name in names:
        compute, draw, reads = ANALYSES[name]
        frames = _frames(ctx, name, compute, reads)
        for fig_name, (fig, frame) in draw(frames).items():
            written.append(save_figure(fig, frame, fig_name, out))
            log(f"[figures] wrote {written[-1]}")
    return written
