"""``steerinterp contrast``: collect the two sides of the toxicity fit sets and show, per site,
how far apart their activations are (the first look before fitting anything)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from ..collection import collect
from .fitsets import DEFAULT_KIND, toxicity_fit_sets
from ..sites import default_sites
from ..store import ActivationStore


def compare_stores(a: ActivationStore, b: ActivationStore) -> pd.DataFrame:
    """Per site, how far apart two stores' pooled activations are.

    Columns: ``site``, ``width``, ``mean_abs_a``, ``mean_abs_b``, ``mean_diff_norm``
    (‖mean_a − mean_b‖₂), ``mean_abs_d`` (mean over units of |Cohen's d|) and ``units_d_gt_1``
    (share of units whose |d| > 1, i.e. that separate the two sets by more than one pooled SD).
    """
    rows = []
    for site in a.sites:
        xa, xb = a[site].double(), b[site].double()
        diff = xa.mean(0) - xb.mean(0)
        sd = ((xa.var(0) + xb.var(0)) / 2).sqrt().clamp_min(1e-12)
        d = (diff / sd).abs()
        rows.append({"site": str(site), "width": xa.shape[1],
                     "mean_abs_a": xa.abs().mean().item(), "mean_abs_b": xb.abs().mean().item(),
                     "mean_diff_norm": diff.norm().item(), "mean_abs_d": d.mean().item(),
                     "units_d_gt_1": (d > 1).double().mean().item()})
    return pd.DataFrame(rows)


@torch.inference_mode()
def run_contrast(model: HookedTransformer, n: int = 64, out: Path | str = "results/contrast",
                 kind: str = DEFAULT_KIND, max_tokens: int = 64) -> pd.DataFrame:
    """Collect the ``n`` + ``n`` toxicity fit texts of ``kind`` (``fitsets``) at the
    Linear-AcT sites and compare them with :func:`compare_stores`."""
    toxic, clean = toxicity_fit_sets(model, n=n, kind=kind)
    sites = default_sites(model, "linear_act")
    out = Path(out) / model.cfg.model_name.replace("/", "_")
    src = collect(model, toxic, sites, max_tokens=max_tokens, path=out / f"{kind}-toxic-{n}")
    tgt = collect(model, clean, sites, max_tokens=max_tokens, path=out / f"{kind}-clean-{n}")
    table = compare_stores(src, tgt)
    return table.rename(columns={"mean_abs_a": "toxic_mean_abs", "mean_abs_b": "clean_mean_abs"})
