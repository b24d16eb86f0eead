"""Where a measurement ran, in one line (benchmarks and reports print it next to numbers)."""

from __future__ import annotations

import platform

import psutil
import torch


def machine(device: str) -> str:
    """A short description of where a benchmark ran."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPU threads, " \
           f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
