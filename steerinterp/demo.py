"""The demo job until the evaluation harness exists: collect and compare two real stores."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from .collection import collect
from .data import length_match, load_texts
from .sites import default_sites
from .store import ActivationStore


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
def run_demo(model: HookedTransformer, n: int = 64, out: Path | str = "results/demo",
             max_tokens: int = 64) -> pd.DataFrame:
    """Collect ``n`` toxic and ``n`` Wikipedia texts (length-matched) at the default AcT sites."""
    toxic, wiki = length_match(model, load_texts("toxic", n=n), load_texts("wiki_target", n=n))
    sites = default_sites(model, "linear_act")
    out = Path(out) / model.cfg.model_name.replace("/", "_")
    src = collect(model, toxic, sites, max_tokens=max_tokens, path=out / f"toxic-{n}")
    tgt = collect(model, wiki, sites, max_tokens=max_tokens, path=out / f"wiki_target-{n}")
    table = compare_stores(src, tgt)
    return table.rename(columns={"mean_abs_a": "toxic_mean_abs", "mean_abs_b": "wiki_mean_abs"})
