"""Benchmarks, reported as ratios to the unsteered / plain model measured in the same run.

Timings are never asserted in tests; they are measured here and printed with the machine they
ran on, so anyone can re-run the command and compare.
"""

from __future__ import annotations

import platform
import statistics
import threading
import time
from contextlib import contextmanager

import psutil
import torch
from transformer_lens import HookedTransformer

from .collection import collect
from .sites import parse_sites
from .tokens import pad_left, token_ids


@contextmanager
def peak_memory(device: str):
    """Yield a dict that receives ``peak_mb``: extra memory at the peak of the block.

    On CUDA this is ``max_memory_allocated``; on CPU the process RSS sampled every 2 ms
    (allocator caching makes it an upper bound of what the block really needed).
    """
    out: dict[str, float] = {}
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield out
        torch.cuda.synchronize()
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        return
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak_mb"] = (peak[0] - base) / 2**20


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


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

    Runs are interleaved (forward, collect, forward, ...) and the median is reported, so drift
    of the machine's speed hits both sides alike.
    """
    sites = parse_sites(sites, model)
    ids = token_ids(model, texts, max_tokens)
    n_tokens = sum(len(x) for x in ids)
    device = str(model.cfg.device)
    _plain_forward(model, ids[:batch_size], batch_size)  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {"forward": [], "collect": []}
    mem: dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in (("forward", lambda: _plain_forward(model, ids, batch_size)),
                         ("collect", lambda: collect(model, texts, sites, pool="mean",
                                                     batch_size=batch_size, max_tokens=max_tokens,
                                                     progress=False))):
            with peak_memory(device) as m:
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
            mem[name] = max(mem.get(name, 0.0), m["peak_mb"])
    fwd, col = statistics.median(times["forward"]), statistics.median(times["collect"])
    return {
        "model": model.cfg.model_name, "device": device, "machine": machine(device),
        "n_texts": len(texts), "n_tokens": n_tokens, "n_sites": len(sites),
        "batch_size": batch_size, "max_tokens": max_tokens, "repeats": repeats,
        "forward_s": fwd, "collect_s": col, "forward_tok_per_s": n_tokens / fwd,
        "collect_tok_per_s": n_tokens / col, "ratio": fwd / col,
        "forward_peak_mb": mem["forward"], "collect_peak_mb": mem["collect"],
        "store_mb": len(texts) * sum(s.width(model) for s in sites) * 4 / 2**20,
    }


def machine(device: str) -> str:
    """A short description of where a benchmark ran."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPU threads, " \
           f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
