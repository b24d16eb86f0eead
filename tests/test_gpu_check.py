"""``make gpu-check`` without a GPU: it refuses in one line, and its plumbing runs on the CPU."""

import json
import subprocess
import sys

import pytest
import torch

from steerinterp.bench import gpu_check
from steerinterp.models import tiny_model


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_check_refuses_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from steerinterp.cli import main; main()",
                           "bench", "gpu-check", "--model", "tiny-gemma", "--out",
                           str(tmp_path / "g.json")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "needs a CUDA GPU and this machine has none" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "g.json").exists()


def test_the_check_measures_everything_on_the_given_device(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(gpu_check, "contract_on",
                        lambda device, tests: calls.append(device) or {"contract_passed": True})
    model = tiny_model("gemma", seed=0)
    out = gpu_check.gpu_check(model, tmp_path, schedules=(2, 3), n=6, fit_set="wiki",
                              new_tokens=2)
    assert calls == ["cpu"] and out["device"] == "cpu" and out["contract_passed"]
    assert out["lineas_2_steps_s"] > 0 and out["lineas_3_step_s"] > 0
    assert any(k.startswith("generate_") for k in out)
    json.dumps(out)  # one flat, JSON-ready record


def test_without_the_test_suite_the_contract_is_reported_missing(tmp_path):
    got = gpu_check.contract_on("cpu", tmp_path)
    assert not got["contract_passed"] and "test_contract.py not found" in got["contract_summary"]
