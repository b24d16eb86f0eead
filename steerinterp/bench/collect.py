"""Benchmarks, reported as ratios to the unsteered / plain model measured in the same run.

Timings are never asserted in tests; they are measured here and printed with the machine they
ran on, so anyone can re-run the command and compare.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time

import torch
from transformer_lens import HookedTransformer

from ..collection import collect
from .common import machine, peak_memory, sync
from ..provenance import model_info
from ..sites import parse_sites
from ..tokens import pad_left, token_ids


@torch.inference_mode()
def _plain_forward(model: HookedTransformer, ids: list[list[int]], batch_size: int,
                   stop_at_layer: int | None = None) -> None:
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # same batches as collect()
    for start in range(0, len(order), batch_size):
        batch = pad_left(model, [ids[i] for i in order[start:start + batch_size]], True)
        model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=stop_at_layer)


def bench_collect(model: HookedTransformer, texts: list[str], sites="all.attn_out,all.mlp_out",
                  batch_size: int = 16, max_tokens: int = 128, repeats: int = 3) -> dict:
    """Throughput of ``collect(pool="mean")`` vs plain forward passes over the same batches.

    Two baselines: ``blocks`` runs the same blocks with no hooks (so ``ratio`` is the cost of
    the pooling hooks alone) and ``full`` is a complete forward with logits (what a
    ``run_with_cache`` user pays). Runs are interleaved and the median is kept, so drift of
    the machine's speed hits every side alike (``full`` runs once: it is only context).
    """
    sites = parse_sites(sites, model)
    ids = token_ids(model, texts, max_tokens)
    n_tokens = sum(len(x) for x in ids)
    device = str(model.cfg.device)
    stop = max(s.layer for s in sites) + 1
    _plain_forward(model, ids[:batch_size], batch_size)  # warm-up (allocator, kernels)
    runs = {
        "blocks": lambda: _plain_forward(model, ids, batch_size, stop_at_layer=stop),
        "full": lambda: _plain_forward(model, ids, batch_size),
        "collect": lambda: collect(model, texts, sites, pool="mean", batch_size=batch_size,
                                   max_tokens=max_tokens, progress=False),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(repeats):
        for name, fn in runs.items():
            if name == "full" and rep > 0:
                continue  # the logits over a 262k vocabulary dominate; once is enough
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    mem = {name: phase_peak_mb(model, name, texts, [str(s) for s in sites], batch_size,
                               max_tokens) for name in ("blocks", "collect")}
    return {
        "model": model.cfg.model_name, "device": device, "machine": machine(device),
        "n_texts": len(texts), "n_tokens": n_tokens, "n_sites": len(sites),
        "batch_size": batch_size, "max_tokens": max_tokens, "repeats": repeats,
        **{f"{k}_s": v for k, v in med.items()},
        "collect_tok_per_s": n_tokens / med["collect"],
        "ratio": med["blocks"] / med["collect"], "ratio_vs_full": med["full"] / med["collect"],
        **{f"{k}_peak_mb": v for k, v in mem.items()},  # extra memory over the loaded model
        "store_mb": len(texts) * sum(s.width(model) for s in sites) * 4 / 2**20,
    }


def phase_peak_mb(model: HookedTransformer, phase: str, texts: list[str], sites: list[str],
                  batch_size: int, max_tokens: int) -> float:
    """Peak extra memory of one phase, measured in a fresh process right after the model is
    loaded (see :func:`peak_memory`), so allocator caches left by other phases (such as a 1 GB
    logits tensor) cannot hide or inflate it."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    args = (model_info(model).name, str(model.cfg.device), phase, texts, sites, batch_size,
            max_tokens, queue)
    proc = ctx.Process(target=_phase_child, args=args)
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _phase_child(name, device, phase, texts, sites, batch_size, max_tokens, queue) -> None:
    from ..models import load_model

    model = load_model(name, device=device)
    ids = token_ids(model, texts, max_tokens)
    stop = max(s.layer for s in parse_sites(sites, model)) + 1
    with peak_memory(device) as mem:
        if phase == "blocks":
            _plain_forward(model, ids, batch_size, stop_at_layer=stop)
        else:
            collect(model, texts, sites, pool="mean", batch_size=batch_size,
                    max_tokens=max_tokens, progress=False)
    queue.put(mem["peak_mb"])
