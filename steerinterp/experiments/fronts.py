"""Toxicity/utility Pareto fronts: a λ sweep of every method and of its DSAS variant, on the
same prompts, seeds and texts (issue 11; ``steerinterp figures --only fronts``).

Each condition is saved as it finishes (``sweep(cache_dir=...)``), so an interrupted sweep
resumes. The grid runs each map from a quarter of its top λ to the top; DSAS over a map runs
to its own (stretched) top, ``Dsas.HEADROOM`` × the base's, because its gates scale λ down
token by token (the DSAS paper sweeps more λ for the gated curves). Vector additions
(unbounded λ) are left out: their λ has no common scale with the maps'.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from transformer_lens import HookedTransformer

from ..steer import Steerer, make
from ..steer.dsas import Dsas
from ..evaluate.generation import GenerationSettings
from ..evaluate.harness import EvalSettings
from ..evaluate.sweep import sweep
from .sizes import FrontSize

# The maps whose fronts are drawn, and the bases that get a DSAS variant.
FRONT_METHODS = ("aura", "mean_shift", "linear_act", "lineas")
FRONT_DSAS = ("mean_shift", "linear_act", "lineas")


def strength_grid(steerer: Steerer, points: int) -> list[float]:
    """``points`` strengths evenly spaced from top/points to the top of the steerer's range."""
    if steerer.strength_range is None:
        raise ValueError(f"{steerer.method} has no bounded strength range: give its λ grid "
                         "explicitly")
    top = float(steerer.strength_range[1])
    return [round(float(x), 6) for x in np.linspace(top / points, top, points)]


def front_steerers(model: HookedTransformer, fitted: dict[str, Steerer], source: list[str],
                   control: list[str], dsas_bases: Sequence[str] = FRONT_DSAS
                   ) -> dict[str, Steerer]:
    """``fitted`` plus ``dsas+<base>`` for each base in ``dsas_bases`` (gates fitted on
    ``source`` vs ``control``)."""
    out = dict(fitted)
    for name in dsas_bases:
        out[f"dsas+{name}"] = make("dsas", base=fitted[name]).fit(model, source,
                                                                  control=control)
    return out


def fronts(model: HookedTransformer, steerers: dict[str, Steerer], prompts: list[str],
           ppl_texts: list[str], size: FrontSize = FrontSize(), seed: int = 0,
           cache_dir: str | Path | None = None, progress: bool = False) -> pd.DataFrame:
    """The sweep frame (``sweep``'s columns, one row per condition plus ``unsteered``) of every
    steerer over its :func:`strength_grid`, with ``base`` (the map a DSAS or E2E-DSAS row
    gates, else the method) and ``gated`` added."""
    settings = EvalSettings(generation=GenerationSettings(
        max_new_tokens=size.new_tokens, samples=size.samples, seed=seed),
        utility_n=size.utility_n, utility_tasks=size.utility_tasks)
    grid = {name: strength_grid(s, size.points) for name, s in steerers.items()}
    frame = sweep(model, steerers, grid, prompts[:size.n_prompts], ppl_texts[:size.n_ppl],
                  settings=settings, cache_dir=cache_dir, progress=progress)
    # A gated row's base is the map its gates scale: a fitted base for DSAS, the LinEAS maps
    # trained with the gates for E2E-DSAS; each base's rows form one family in the figure.
    base = {name: s.base.method if isinstance(s, Dsas) and s.base is not None else name
            for name, s in steerers.items()}
    frame["gated"] = frame["method"].map(lambda m: base.get(m, m) != m)
    frame["base"] = frame["method"].map(lambda m: base.get(m, m))
    return frame


__all__ = ["FRONT_DSAS", "FRONT_METHODS", "FrontSize", "front_steerers", "fronts",
           "strength_grid"]
