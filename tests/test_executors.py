"""Executors without a Ray runtime: the local one, names, a missing Ray, the condition lock
and the parallel ETA (Ray itself: ``test_executors_ray.py``)."""

import subprocess
import sys

import pytest

from steerinterp.errors import ExecutorError
from steerinterp.evaluate.harness import evaluate
from steerinterp.evaluate.progress import StageClock
from steerinterp.executors import LocalExecutor, get_executor
from steerinterp.steer import make
from tiny_texts import PPL, PROMPTS, SETTINGS, SOURCE, TARGET, length_scorer


@pytest.fixture(scope="module")
def shift(tiny_gpt2):
    return make("mean_shift", sites="all.mlp_out").fit(tiny_gpt2, SOURCE, TARGET)


# -- no Ray needed ------------------------------------------------------------------------------
def test_local_executor_calls_in_order_and_reports(tiny_gpt2):
    seen = []
    out = LocalExecutor().map(tiny_gpt2, lambda m, shared, x: shared + x, [(1,), (2,)], 10,
                              on_start=lambda i: seen.append(("start", i)),
                              on_result=lambda i, r: seen.append(("done", i, r)))
    assert out == [11, 12]
    assert seen == [("start", 0), ("done", 0, 11), ("start", 1), ("done", 1, 12)]


def test_executor_names_are_checked():
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        get_executor("dask")
    with pytest.raises(ValueError, match="use it with --executor ray"):
        get_executor("local", address="127.0.0.1:6379")


def test_without_ray_the_ray_executor_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when not installed
    with pytest.raises(ExecutorError, match=r"needs Ray: pip install 'steerinterp\[distributed\]'"):
        get_executor("ray")


def test_cli_without_ray_exits_2_in_one_line(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; sys.argv[0] = 'steerinterp'; "
            "from steerinterp.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "run", "--model", "tiny-gpt2", "--size",
                           "smoke", "--executor", "ray", "-o", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "needs Ray" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "r" / "conditions").exists()  # refused before any work


def test_a_condition_folder_is_locked_while_it_is_computed(tiny_gpt2, shift, tmp_path,
                                                           monkeypatch):
    """Two processes (Ray workers, two runs) never write one condition folder at once."""
    import steerinterp.evaluate.harness as harness

    real = harness.generate
    probe = ("import sys; from filelock import FileLock, Timeout\n"
             "try:\n    FileLock(sys.argv[1]).acquire(timeout=0)\nexcept Timeout:\n"
             "    sys.exit(3)\n")
    codes = []

    def generate_while_probing(*a, **k):
        lock = tmp_path / "c" / ".lock"
        codes.append(subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode)
        return real(*a, **k)

    monkeypatch.setattr(harness, "generate", generate_while_probing)
    evaluate(tiny_gpt2, shift, prompts=PROMPTS[:2], ppl_texts=PPL[:2], settings=SETTINGS,
             scorer=length_scorer, progress=False, folder=tmp_path / "c")
    assert codes == [3]  # another process could not take the lock
    assert (tmp_path / "c" / "summary.json").exists()


def test_stage_clock_prices_parallel_stages_per_worker():
    clock = StageClock({"evaluate": 5}, log=lambda _: None, parallel={"evaluate": 2})
    clock.finish(("evaluate", 0.0))  # a stage that started at t = 0: priced at "now" seconds
    clock.times["evaluate"][-1] = 10.0
    assert clock.eta() == pytest.approx(4 * 10.0 / 2)
