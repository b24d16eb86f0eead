"""Executors on a local Ray runtime (``num_cpus=2``; nothing leaves the machine): a sweep, a
calibration and the main job give the local frame on Ray workers; a worker that dies
mid-condition is replaced and its condition re-run, or reported. Slow: each worker imports
torch and loads the model."""

import os
import sys

import pandas as pd
import pytest
import torch

from steerinterp.errors import ExecutorError
from steerinterp.evaluate.sweep import calibrate, sweep
from steerinterp.executors import get_executor
from steerinterp.steer import make
import tiny_texts
from tiny_texts import PPL, PROMPTS, SETTINGS, SOURCE, TARGET, length_scorer

LAMS = [0.25, 0.5, 0.75, 1.0]


pytestmark = pytest.mark.slow

class DyingScorer:
    """Kills the process that scores (a Ray worker: never call it in the test process) the
    first time, or every time; the marker file remembers across worker processes."""

    def __init__(self, marker, always: bool = False):
        self.marker, self.always = str(marker), always

    def __call__(self, texts):
        if self.always or not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return length_scorer(texts)


def fails(model, shared, x):
    raise ValueError(f"bad value {x}")


@pytest.fixture(scope="module")
def shift(tiny_gpt2):
    return make("mean_shift", sites="all.mlp_out").fit(tiny_gpt2, SOURCE, TARGET)


@pytest.fixture(scope="module")
def ray_ex():
    ray = pytest.importorskip("ray", reason="the [distributed] extra (make test installs it)")
    from ray import cloudpickle

    # Workers cannot import this test module: ship its functions and classes by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cloudpickle.register_pickle_by_value(tiny_texts)
    ex = get_executor("ray", workers=2)
    yield ex
    ex.close()
    assert not ray.is_initialized()


def test_ray_sweep_gives_the_local_frame_and_resumes(tiny_gpt2, shift, ray_ex, tmp_path):
    local = sweep(tiny_gpt2, {"shift": shift}, LAMS, PROMPTS, PPL, SETTINGS,
                  scorer=length_scorer, progress=False)
    remote = sweep(tiny_gpt2, {"shift": shift}, LAMS, PROMPTS, PPL, SETTINGS,
                   scorer=length_scorer, progress=False, cache_dir=tmp_path, executor=ray_ex)
    pd.testing.assert_frame_equal(local, remote)
    done = {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("*/summary.json")}
    assert set(done) == set(local["condition"])  # one folder per condition
    again = sweep(tiny_gpt2, {"shift": shift}, LAMS, PROMPTS, PPL, SETTINGS,
                  scorer=length_scorer, progress=False, cache_dir=tmp_path, executor=ray_ex)
    pd.testing.assert_frame_equal(local, again)
    assert done == {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("*/summary.json")}


def test_ray_calibration_lands_in_the_local_bracket(tiny_gpt2, ray_ex):
    costly = make("mean_shift", sites="all.mlp_out").fit(tiny_gpt2, TARGET, SOURCE)
    with torch.no_grad():  # a shift that costs the random model perplexity, steadily in λ
        for p in costly.tensors.values():
            p.mul_(5)
    kw = dict(ppl_budget=0.1, max_evals=20, tol=0.01)
    local = calibrate(tiny_gpt2, costly, PPL, **kw)
    remote = calibrate(tiny_gpt2, costly, PPL, executor=ray_ex, **kw)
    assert not local.saturated and not remote.saturated
    assert remote.delta_ppl_rel <= 0.1
    # Both brackets hold the budget's crossing and are narrower than tol × top (λ ≤ 1).
    assert remote.strength == pytest.approx(local.strength, abs=0.0101)
    assert len(remote.path) % 2 == 1  # the top, then two strengths per round


def test_ray_main_job_gives_the_local_frame(tiny_gpt2, ray_ex, tmp_path):
    from steerinterp.experiments.job import JobSpec, run_job

    spec = JobSpec("tiny-gpt2", fit_set="wiki", size="smoke", methods=("mean_shift", "aura"))
    quiet = dict(progress=False, log=lambda _: None)
    local = run_job(tiny_gpt2, spec, tmp_path / "local", **quiet)
    remote = run_job(tiny_gpt2, spec, tmp_path / "ray", executor=ray_ex, **quiet)
    pd.testing.assert_frame_equal(local.drop(columns="fit_seconds"),
                                  remote.drop(columns="fit_seconds"))


def test_a_call_that_raises_comes_back_as_its_own_error(tiny_gpt2, ray_ex):
    with pytest.raises(ValueError, match="bad value 7"):
        ray_ex.map(tiny_gpt2, fails, [(7,)])


def test_a_worker_that_dies_mid_condition_is_replaced_and_the_condition_rerun(
        tiny_gpt2, shift, ray_ex, tmp_path):
    local = sweep(tiny_gpt2, {"shift": shift}, [1.0], PROMPTS, PPL, SETTINGS,
                  scorer=length_scorer, progress=False)
    remote = sweep(tiny_gpt2, {"shift": shift}, [1.0], PROMPTS, PPL, SETTINGS,
                   scorer=DyingScorer(tmp_path / "died"), progress=False,
                   cache_dir=tmp_path / "c", executor=ray_ex)
    assert (tmp_path / "died").exists()  # a worker did die
    pd.testing.assert_frame_equal(local, remote)


def test_a_worker_that_keeps_dying_is_reported_and_nothing_is_half_written(
        tiny_gpt2, shift, ray_ex, tmp_path):
    with pytest.raises(ExecutorError, match=r"(unsteered|shift@1): its Ray worker died 2 times.*nothing"):
        sweep(tiny_gpt2, {"shift": shift}, [1.0], PROMPTS, PPL, SETTINGS,
              scorer=DyingScorer(tmp_path / "died", always=True), progress=False,
              cache_dir=tmp_path / "c", executor=ray_ex)
    assert not list((tmp_path / "c").glob("*/summary.json"))
    # The executor is still usable: dead workers were replaced.
    assert ray_ex.map(tiny_gpt2, lambda m, s, x: x + 1, [(1,)]) == [2]


def test_an_unreachable_cluster_is_one_clear_line():
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ExecutorError, match=f"cannot reach the Ray cluster at '127.0.0.1:{port}'"):
        get_executor("ray", address=f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="expected host:port"):
        get_executor("ray", address="no-port-here")


def test_ray_figures_give_the_local_frames(ray_ex, tmp_path):
    import steerinterp.experiments.figures as figures
    from steerinterp.models import load_model

    model = load_model("tiny-gpt2")
    only = ["auroc", "token_scales", "attribution"]
    kw = dict(size="quick", only=only, log=lambda _: None)
    local = figures.make_figures(model, tmp_path / "local", cache=tmp_path / "lc", **kw)
    remote = figures.make_figures(model, tmp_path / "ray", cache=tmp_path / "rc",
                                  executor=ray_ex, **kw)
    assert [p.name for p in local] == [p.name for p in remote]
    for png in local:
        pd.testing.assert_frame_equal(pd.read_csv(png.with_suffix(".csv")),
                                      pd.read_csv(tmp_path / "ray" / png.with_suffix(".csv").name))


def test_bench_sweep_reports_both_times_on_the_same_frame(tiny_gpt2, ray_ex):
    from steerinterp.bench.sweep import bench_sweep

    result = bench_sweep(tiny_gpt2, n_prompts=2, n_ppl=2, new_tokens=2, executor=ray_ex)
    assert result["conditions"] == 8 and result["same_frame"]
    assert result["local_s"] > 0 and result["ray_sweep_s"] > 0 and result["ray_start_s"] > 0


def test_workers_without_free_cpus_are_an_error_not_a_wait(tiny_gpt2, ray_ex):
    from steerinterp.executors import RayExecutor

    ray_ex.map(tiny_gpt2, lambda m, s: None, [()])  # its 2 workers hold both CPUs
    second = RayExecutor(workers=1, start_timeout=5)
    with pytest.raises(ExecutorError, match="did not start within 5 s: the cluster has no free"):
        second.map(tiny_gpt2, lambda m, s: None, [()])
    second.close()
