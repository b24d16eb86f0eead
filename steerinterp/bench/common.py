"""What every benchmark shares: peak memory of a block, device sync, the machine line.

Benchmarks report ratios to a baseline measured in the same run. Timings are never asserted in
tests; they are measured here and printed with the machine they ran on, so anyone can re-run
the command and compare.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psutil
import torch

from ..machine import machine

__all__ = ["machine", "peak_memory", "sync"]


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


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
