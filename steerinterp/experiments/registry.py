"""The registry behind ``steerinterp figures``: the sizes, the context every analysis shares,
the registered analyses and their cached frames (:mod:`.figures` runs them, :mod:`.analyses`
defines them).

Each analysis is a pair: ``compute(ctx) -> {name: DataFrame}`` (slow; cached as CSV under the
cache folder with a key of model, size and seed) and ``draw(frames) -> {name: Figure}`` (fast;
only reads the frames). ``save_figure`` writes each PNG next to the CSV it was drawn from.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from transformer_lens import HookedTransformer

from ..data import load_texts
from .sizes import FIGURE_SIZES, FigureSize
from .fitsets import toxicity_fit_sets
from ..io import CorruptFileError, fingerprint, read_csv, read_json, write_csv
from ..io import write_json
from ..steer import Steerer, load_or_fit, make


CALIBRATION_TAIL = 256  # the far end of a text set, left to λ calibration (``held_out``)

# Analyses whose frames changed meaning without a size change (e.g. other read-out texts):
# their revision joins the cache key, so frames cached before are recomputed.
REVISIONS: dict[str, int] = {}


@dataclass
class Context:
    """What every analysis shares: the model, the texts, the size and the cache folder."""

    model: HookedTransformer
    size: str
    cache: Path
    seed: int = 0
    log: Callable[[str], None] = print
    _steerers: dict[str, Steerer] = field(default_factory=dict)

    @property
    def z(self) -> FigureSize:
        return FIGURE_SIZES[self.size]

    def texts(self, held_out: bool = False) -> tuple[list[str], list[str]]:
        """The toxicity fit sets (source, target) of this size's kind (``fitsets``); with
        ``held_out``, the next texts of the same shuffle, disjoint from the fit."""
        return toxicity_fit_sets(self.model, n=self.z.n_texts, kind=self.z.fit_set,
                                 seed=self.seed, held_out=held_out, log=self.log)

    def held_out(self, name: str, n: int) -> list[str]:
        """``n`` read-out texts of ``name`` that no fit set and no calibration reads, in a seeded
        order: toxic ones from the prompts kept out of every fit set (``calibration_prompts``:
        the continuation fit sets are built from the others), any other set without its far
        end (where ``calibration_ppl_texts`` calibrates λ)."""
        from .fitsets import calibration_prompts

        pool = calibration_prompts() if name == "toxic" else load_texts(name)[:-CALIBRATION_TAIL]
        if n > len(pool):
            raise ValueError(f"{n} held-out {name} texts asked for; {len(pool)} are held out")
        order = list(range(len(pool)))
        random.Random(self.seed).shuffle(order)
        return [pool[i] for i in order[:n]]

    def steerer(self, name: str, method: str | None = None, control: list[str] | None = None,
                **options) -> Steerer:
        """Fit (or load from the cache) a steerer on the fit sets (and ``control`` texts, for
        the methods that read them). ``name`` is the cache key: put every option in it."""
        if name in self._steerers:
            return self._steerers[name]
        def fit() -> Steerer:
            self.log(f"[figures] fitting {name}")
            return make(method or name, **options).fit(self.model, *self.texts(),
                                                       control=control)

        self._steerers[name] = load_or_fit(self.cache / "steerers" / name, self.model, fit)
        return self._steerers[name]


def _frames(ctx: Context, analysis: str, compute, reads: tuple[str, ...] | None
            ) -> dict[str, pd.DataFrame]:
    """The analysis's frames from the cache, or computed and cached. The key holds only the
    size fields the analysis ``reads`` (None: all), so adding a field for one analysis does
    not invalidate the others' hour-long frames."""
    folder = ctx.cache / "frames" / analysis
    size = asdict(ctx.z)
    parts = {"model": ctx.model.cfg.model_name, "seed": ctx.seed, "analysis": analysis,
             "size": {k: v for k, v in size.items() if reads is None or k in reads}}
    if analysis in REVISIONS:
        parts["revision"] = REVISIONS[analysis]
    key = fingerprint(parts)
    meta = folder / "done.json"
    if meta.exists():
        try:
            done = read_json(meta, f"{analysis} frames")
            if done.get("key") == key:
                frames = {n: read_csv(folder / f"{n}.csv", f"{analysis} frame {n}")
                          for n in done["frames"]}
                for n, attrs in done.get("attrs", {}).items():
                    frames[n].attrs.update(attrs)  # CSV drops them; titles read them
                return frames
        except (CorruptFileError, FileNotFoundError):
            pass
    ctx.log(f"[figures] computing {analysis} ({ctx.size} size)")
    frames = compute(ctx)
    for name, frame in frames.items():
        write_csv(folder / f"{name}.csv", frame)
    write_json(meta, {"key": key, "frames": list(frames),
                      "attrs": {n: f.attrs for n, f in frames.items() if f.attrs}})
    return frames


ANALYSES: dict[str, tuple[Callable, Callable, tuple[str, ...] | None]] = {}


def analysis(name: str, reads: tuple[str, ...] | None = None, revision: int = 0):
    """Register ``(compute, draw)`` under ``name``; ``reads``: the FigureSize fields compute
    uses (the cache key), None for all; ``revision``: bump it when compute changes what its
    frames mean, so cached ones are recomputed."""
    unknown = set(reads or ()) - set(FigureSize.__dataclass_fields__)
    if unknown:
        raise ValueError(f"analysis {name!r} reads unknown size fields {sorted(unknown)}")

    if revision:
        REVISIONS[name] = revision

    def register(pair: tuple[Callable, Callable]):
        ANALYSES[name] = (*pair, reads)
        return pair
    return register
