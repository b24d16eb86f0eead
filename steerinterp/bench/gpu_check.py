"""``make gpu-check`` / ``steerinterp bench gpu-check``: what a GPU machine is checked with once.

Loads the model on the GPU, runs the method contract there (``tests/test_contract.py`` with
``STEERINTERP_TEST_DEVICE``), fits LinEAS with the reference recipe (the converged schedule and
the reference's 1000 steps) and runs the steered-generation benchmark, and writes every number
with the machine it came from to one JSON file. On a machine without the device it refuses in
one line (it never silently measures the CPU instead).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from .common import machine, sync


def check_device(device: str) -> None:
    """ValueError naming the problem when ``device`` is a GPU this machine does not have."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"gpu-check needs a CUDA GPU and this machine has none (device "
                         f"{device!r}); run it where one is, or pass --device cpu to try it")


def contract_on(device: str, tests: Path) -> dict:
    """The contract suite with its tiny models on ``device``: passed and the pytest summary."""
    suite = tests / "test_contract.py"
    if not suite.is_file():  # an installed package has no tests: say so in the record
        return {"contract_passed": False, "contract_summary": f"{suite} not found: run "
                "make gpu-check from a clone of the repository"}
    env = {**os.environ, "STEERINTERP_TEST_DEVICE": device}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tests / "test_contract.py")], env=env, capture_output=True,
                          text=True)
    lines = proc.stdout.strip().splitlines()
    return {"contract_passed": proc.returncode == 0, "contract_summary": lines[-1] if lines
            else proc.stderr.strip()[-300:]}


def time_lineas(model, steps: int, n: int, fit_set: str) -> dict:
    """Wall time of a LinEAS fit (reference recipe, ``steps`` steps) on ``n`` + ``n`` fit texts."""
    from ..experiments.fitsets import toxicity_fit_sets
    from ..steer import make

    toxic, clean = toxicity_fit_sets(model, n=n, kind=fit_set, progress=False,
                                     log=lambda msg: None)
    device = str(model.cfg.device)
    sync(device)
    t0 = time.perf_counter()
    lineas = make("lineas", steps=steps).fit(model, toxic, clean)
    sync(device)
    seconds = time.perf_counter() - t0
    return {f"lineas_{steps}_steps_s": seconds, f"lineas_{steps}_step_s": seconds / steps,
            f"lineas_{steps}_final_loss": lineas.loss_frame()["loss"].iloc[-10:].mean()}


def gpu_check(model, tests: Path, schedules: tuple[int, ...], n: int = 32,
              fit_set: str = "continuations", new_tokens: int = 32) -> dict:
    """Every measurement of the check, as one flat dict (see the module docstring)."""
    from .generate import bench_generate

    device = str(model.cfg.device)
    out = {"model": model.cfg.model_name, "device": device, "machine": machine(device),
           "torch": torch.__version__, **contract_on(device, tests)}
    for steps in schedules:
        out.update(time_lineas(model, steps, n, fit_set))
    gen = bench_generate(model, new_tokens=new_tokens, hf=False)
    out.update({f"generate_{k}": v for k, v in gen.items() if isinstance(v, (int, float, bool))})
    return out
