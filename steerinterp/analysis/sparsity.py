"""Layer sparsity of LinEAS along a path of sparsity strengths γ (LinEAS §3.2, §4.3 Fig. 4,
App. K; METHODS.md §5.3).

LinEAS regularises each site's deviation from identity with a sparse group lasso,
``γ·Σ_ℓ [λ1(‖ω_ℓ−1‖₁ + ‖b_ℓ‖₁) + λG·√d_ℓ(‖ω_ℓ−1‖₂ + ‖b_ℓ‖₂)]``: the L1 term zeroes single
units, the group term whole sites ("group lasso selects a few consistent layers", App. K).
:func:`fit_lineas_path` fits one steerer per γ (λ1, λG fixed, as in the paper's single knob),
:func:`layer_sparsity` reads off which units and sites survive, optionally next to an
evaluation (toxicity, perplexity) of each point of the path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..io import fingerprint
from ..provenance import model_info
from ..sites import Site
from ..steer.base import check_sites, load_or_fit, make
from ..steer.lineas import Lineas
from ..store import ActivationStore

SPARSITY_COLUMNS = ["gamma", "lambda1", "lambda_group", "site", "layer", "point", "n_units",
                    "support", "omega_norm", "bias_norm", "group_norm", "active"]


def _check_gammas(gammas) -> list[float]:
    gammas = [float(g) for g in gammas]
    if not gammas:
        raise ValueError("the gamma path is empty: pass at least one gamma")
    bad = [g for g in gammas if not math.isfinite(g) or g < 0]
    if bad:
        raise ValueError(f"gammas must be finite and >= 0, got {bad}")
    if len(set(gammas)) != len(gammas):
        raise ValueError(f"gammas must be distinct (rows are keyed by gamma), got {gammas}")
    return gammas


def _data_key(data) -> object:
    """What identifies a data set in the cache key: its texts (a store: its manifest)."""
    if isinstance(data, ActivationStore):
        return {k: v for k, v in data.meta.items() if k != "versions"}
    return list(data) if isinstance(data, (list, tuple)) else repr(data)


def cache_name(model: HookedTransformer, steerer: Lineas, source, target) -> str:
    """``lineas_gamma=<γ>_<key>``: ``key`` hashes the model, every option and the data, so a
    cached fit is reused only for the very same inputs."""
    key = fingerprint({"model": model_info(model).to_dict(), "config": asdict(steerer.config),
                       "source": _data_key(source), "target": _data_key(target)})
    return f"lineas_gamma={steerer.config.gamma:.6g}_{key[:12]}"


def fit_lineas_path(model: HookedTransformer, source, target, gammas: Sequence[float],
                    base_config: dict | None = None, cache_dir: str | Path | None = None,
                    progress: bool = True) -> list[Lineas]:
    """Fit LinEAS once per ``gamma`` (same data, seed and other options ``base_config``, e.g.
    ``{"steps": 1000, "lambda1": 1.0, "lambda_group": 1.0, "sites": ...}``); returns the
    steerers in the order of ``gammas``.

    Each fit starts from the identity: ``Lineas.fit`` initialises its maps itself, so a path
    cannot be warm-started from the previous γ; fits are independent (and any order works).
    With ``cache_dir`` every fitted steerer is saved as ``lineas_gamma=<γ>_<key>/``, where
    ``key`` hashes the model, the options and the data; a later call with the same inputs loads
    it instead of refitting, so an interrupted path resumes where it stopped.
    """
    gammas = _check_gammas(gammas)
    opts = dict(base_config or {})
    if "gamma" in opts:
        raise ValueError("base_config must not set 'gamma': the path sets it (pass gammas=)")
    steerers = [make("lineas", **opts, gamma=g) for g in gammas]  # bad options fail before fitting
    cache = Path(cache_dir) if cache_dir is not None else None
    out = []
    for steerer in tqdm(steerers, desc="lineas γ path", disable=not progress):
        def fit(steerer: Lineas = steerer) -> Lineas:
            return steerer.fit(model, source, target)

        out.append(fit() if cache is None else
                   load_or_fit(cache / cache_name(model, steerer, source, target), model, fit))
    return out


def layer_sparsity(steerers: Sequence[Lineas], gammas: Sequence[float] | None = None,
                   evaluation: pd.DataFrame | None = None, sites=None) -> pd.DataFrame:
    """Which units and sites each LinEAS steerer of a γ path still steers.

    One row per (γ, site), sorted by γ then forward-pass order:

    * ``gamma``, ``lambda1``, ``lambda_group``: the steerer's sparsity knob and the L1 / group
      weights it multiplies (penalty ``γ·[λ1·L1 + λG·√d·(‖ω−1‖₂ + ‖b‖₂)]``);
    * ``site``, ``layer``, ``point``, ``n_units`` (the site's width d);
    * ``support``: share of units with a non-identity map (ω ≠ 1 or b ≠ 0), in [0, 1];
    * ``omega_norm`` ``‖ω−1‖₂``, ``bias_norm`` ``‖b‖₂``, ``group_norm`` their sum: the two
      groups the proximal step thresholds (each is set to exactly 0 once its norm falls below
      ``lr·γ·λG·√d``);
    * ``active``: ``group_norm > 0``, i.e. the site steers at all.

    ``gammas`` defaults to each steerer's ``config.gamma``. ``evaluation`` (one row per γ,
    a ``gamma`` column plus e.g. ``toxic_share``/``mean_score``, ``ppl``) is merged on γ.
    ``sites`` restricts the rows to those sites (each must be steered by every steerer).
    """
    steerers = list(steerers)
    if not steerers:
        raise ValueError("layer_sparsity needs at least one fitted LinEAS steerer")
    for i, s in enumerate(steerers):
        if not isinstance(s, Lineas):
            hint = " (for DSAS pass its .base)" if hasattr(s, "base") else ""
            raise TypeError(f"layer_sparsity reads LinEAS steerers; item {i} is "
                            f"{type(s).__name__}{hint}")
        if not s.fitted:
            raise ValueError(f"LinEAS steerer {i} is not fitted; call .fit() first")
    gammas = [s.config.gamma for s in steerers] if gammas is None else list(gammas)
    if len(gammas) != len(steerers):
        raise ValueError(f"got {len(gammas)} gammas for {len(steerers)} steerers")
    gammas = _check_gammas(gammas)
    frames = []
    for g, s in zip(gammas, steerers):
        keep = {str(x) for x in check_sites(sites, s.sites, f"the LinEAS steerer at γ={g:g}")}
        df = s.support()
        df = df[df["site"].isin(keep)]
        df = df.assign(gamma=g, lambda1=s.config.lambda1, lambda_group=s.config.lambda_group,
                       n_units=df["site"].map({str(k): w for k, w in s.provenance.widths.items()}))
        frames.append(df.assign(active=df["group_norm"] > 0))
    out = pd.concat(frames, ignore_index=True)
    order = {str(x): i for i, x in enumerate(sorted({Site.parse(v) for v in out["site"]}))}
    out = (out.assign(_o=out["site"].map(order)).sort_values(["gamma", "_o"])
           .drop(columns="_o").reset_index(drop=True)[SPARSITY_COLUMNS])
    return out if evaluation is None else merge_evaluation(out, evaluation)


def merge_evaluation(df: pd.DataFrame, evaluation: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``evaluation``'s columns joined on ``gamma`` (matched up to float rounding);
    γ values missing from ``evaluation`` get NaN."""
    if not isinstance(evaluation, pd.DataFrame) or "gamma" not in evaluation.columns:
        raise ValueError("evaluation must be a DataFrame with a 'gamma' column")
    if evaluation["gamma"].duplicated().any():
        raise ValueError("evaluation must have one row per gamma; duplicated: "
                         f"{sorted(evaluation.loc[evaluation['gamma'].duplicated(), 'gamma'])}")
    clash = sorted(set(evaluation.columns) & set(df.columns) - {"gamma"})
    if clash:
        raise ValueError(f"evaluation columns {clash} clash with layer_sparsity's; rename them")
    path = np.array(sorted(df["gamma"].unique()))
    ev = evaluation.copy()
    # Snap evaluation γ onto the path's γ: 1e-3 computed two ways must still match.
    ev["gamma"] = [next((p for p in path if np.isclose(p, g, rtol=1e-9, atol=1e-15)), g)
                   for g in ev["gamma"].astype(float)]
    if not ev["gamma"].isin(path).any():
        raise ValueError(f"no evaluation gamma {sorted(evaluation['gamma'])} matches the "
                         f"path's gammas {list(path)}")
    return df.merge(ev, on="gamma", how="left", validate="many_to_one")
