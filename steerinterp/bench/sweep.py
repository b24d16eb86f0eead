"""``steerinterp bench sweep``: the same 8-condition sweep (unsteered + mean shift at 7 λ) in
this process and on Ray workers, wall time and the ratio, with the frames checked equal.

The Ray time is split into starting the workers (runtime start, each worker importing torch
and loading the model) and the sweep on warm workers; on a 2-core machine the ratio mainly
shows that overhead, since the local sweep already uses both cores.
"""

from __future__ import annotations

import time

import pandas as pd
from transformer_lens import HookedTransformer

from ..data import load_prompts, load_texts
from ..evaluate.generation import GenerationSettings
from ..evaluate.harness import EvalSettings
from ..evaluate.sweep import sweep
from ..executors import RayExecutor
from ..steer import make
from .common import machine
from .steer import fit_texts

STRENGTHS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0)  # + the unsteered model: 8 conditions


def bench_sweep(model: HookedTransformer, n_prompts: int = 16, n_ppl: int = 16,
                new_tokens: int = 16, workers: int = 2, address: str | None = None,
                seed: int = 0, executor: RayExecutor | None = None) -> dict:
    """Wall seconds of one sweep locally and on ``workers`` Ray workers (same frame); an
    ``executor`` already running is used as it is (its start time is then ~0)."""
    source, target = fit_texts(model, 32, seed)
    shift = make("mean_shift").fit(model, source, target)
    settings = EvalSettings(generation=GenerationSettings(max_new_tokens=new_tokens, samples=2,
                                                          seed=seed))
    limit = settings.generation.max_prompt_tokens  # the tiny byte-level model: short ones only
    prompts = [p for p in load_prompts("toxic_prompts", seed=seed)
               if model.to_tokens(p).shape[1] <= limit][:n_prompts]
    args = ({"mean_shift": shift}, list(STRENGTHS), prompts, load_texts("wiki_ppl", n=n_ppl))
    owned = executor is None
    ex = RayExecutor(workers=workers, address=address) if owned else executor  # no Ray: said now
    try:
        t = time.perf_counter()
        local = sweep(model, *args, settings=settings, progress=False)
        local_s = time.perf_counter() - t
        t = time.perf_counter()
        ex.map(model, _noop, [()] * workers)  # start the workers: each loads the model
        start_s = time.perf_counter() - t
        t = time.perf_counter()
        remote = sweep(model, *args, settings=settings, progress=False, executor=ex)
        ray_s = time.perf_counter() - t
    finally:
        if owned:
            ex.close()
    pd.testing.assert_frame_equal(local, remote)  # a benchmark of a wrong result is worthless
    return {"model": model.cfg.model_name, "conditions": len(local), "prompts": n_prompts,
            "new_tokens": new_tokens, "ppl_texts": n_ppl, "workers": ex.workers,
            "local_s": round(local_s, 2), "ray_start_s": round(start_s, 2),
            "ray_sweep_s": round(ray_s, 2), "ray_total_s": round(start_s + ray_s, 2),
            "speedup_warm": round(local_s / ray_s, 2),
            "speedup_total": round(local_s / (start_s + ray_s), 2),
            "same_frame": True, "machine": machine(str(model.cfg.device))}


def _noop(model, shared) -> None:
    return None
