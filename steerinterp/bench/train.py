"""``steerinterp bench lineas``: the cost of one LinEAS training step against the model's own
forward + backward on the same batch, measured in the same run."""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch
from transformer_lens import HookedTransformer

from .common import machine, sync
from ..experiments.fitsets import DEFAULT_KIND, toxicity_fit_sets
from ..sites import default_sites
from ..steer import make, steered
from ..tokens import pad_left, token_ids
from ..train import train


def _plain_step(model: HookedTransformer, ids: list[list[int]], stop: int) -> None:
    """Forward through the same blocks and backward into the model's own weights (what one
    fine-tuning step of the frozen part would cost)."""
    batch = pad_left(model, ids, True)
    out = model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=stop)
    out.float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)


def bench_lineas(model: HookedTransformer, n: int = 32, repeats: int = 5,
                 max_tokens: int = 64, fit_set: str = DEFAULT_KIND) -> dict:
    """Median seconds of one LinEAS step with the default recipe (steered forward with
    pooling, W2 loss against every target sample, backward, optimiser step + prox; each timed
    call also builds the optimiser and sorts the targets once) vs plain forward + backward
    through the same blocks, interleaved, on ``n`` + ``n`` toxicity fit texts of ``fit_set``.

    ``converged_min``: the step time × the schedule that matches the reference's 1000 steps
    (:data:`~steerinterp.experiments.sizes.LINEAS_CONVERGED`, measured on gemma-3-270m), i.e. the
    wall time to a converged fit; ``est_1000_steps_min`` the reference schedule's.
    ``lineas_step_bf16_s``: the same step under bfloat16 autocast (``precision="bf16"``, the
    demo's; measured to give the fp32 fit), interleaved with the fp32 one."""
    from ..experiments.sizes import LINEAS_CONVERGED

    toxic, wiki = toxicity_fit_sets(model, n=n, kind=fit_set, progress=False,
                                    log=lambda msg: None)
    sites = default_sites(model, "lineas")
    lineas = make("lineas", steps=1, max_tokens=max_tokens).fit(model, source=toxic, target=wiki)
    ids = token_ids(model, toxic, max_tokens)
    from ..collection import collect
    target = collect(model, wiki, sites, max_tokens=max_tokens, progress=False)
    stop = max(s.layer for s in sites) + 1
    params = [p.requires_grad_(True) for p in lineas.tensors.values()]
    settings = dataclasses.replace(lineas.config.train_settings(), steps=1,
                                   batch_size=lineas.provenance.extra["train"]["batch_size"])
    bf16 = dataclasses.replace(settings, precision="bf16")
    times: dict[str, list[float]] = {"lineas_step": [], "lineas_step_bf16": [],
                                     "forward_backward": []}
    for _ in range(repeats):
        for name, how in (("lineas_step", settings), ("lineas_step_bf16", bf16)):
            sync(str(model.cfg.device))
            t0 = time.perf_counter()
            with steered(model, lineas, strength=1.0):
                train(model, params, ids, target, sites, how, prox=lineas.prox)
            sync(str(model.cfg.device))
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.enable_grad():
            _plain_step(model, ids[:settings.batch_size], stop)  # the same batch size
        sync(str(model.cfg.device))
        times["forward_backward"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": model.cfg.model_name, "device": str(model.cfg.device),
            "machine": machine(str(model.cfg.device)), "n_source": n,
            "batch": settings.batch_size, "optimizer": settings.optimizer, "n_sites": len(sites),
            "n_params": sum(p.numel() for p in params), "repeats": repeats,
            **{f"{k}_s": v for k, v in med.items()},
            "ratio": med["lineas_step"] / med["forward_backward"],
            "bf16_speedup": med["lineas_step"] / med["lineas_step_bf16"],
            "est_1000_steps_min": med["lineas_step"] * 1000 / 60, "fit_set": fit_set,
            "converged_steps": LINEAS_CONVERGED,
            "converged_min": med["lineas_step"] * LINEAS_CONVERGED / 60,
            "converged_min_bf16": med["lineas_step_bf16"] * LINEAS_CONVERGED / 60}
