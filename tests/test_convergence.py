"""LinEAS convergence curves (``analysis.convergence``, ``figures --only lineas_convergence``)
and the snapshots they read, on the tiny model."""

import pandas as pd
import pytest
import torch

import steerinterp.experiments.figures as figures
from steerinterp.analysis.convergence import checkpoints, lineas_convergence
from steerinterp.models import load_model
from steerinterp.steer import SteerError, make



@pytest.fixture(scope="module")
def model():
    return load_model("tiny-gpt2")


def test_checkpoints_are_geometric_and_end_at_the_schedule():
    assert checkpoints(1000) == [31, 62, 125, 250, 500, 1000]
    assert checkpoints(3) == [1, 2, 3]
    with pytest.raises(ValueError, match="steps must be >= 1"):
        checkpoints(0)


def test_snapshot_at_the_last_step_is_the_fitted_map(model, two_sets):
    lin = make("lineas", steps=4, minibatch=4)
    lin.snapshot_at = (2, 4)
    lin.fit(model, *two_sets)
    end, mid = lin.at_snapshot(4), lin.at_snapshot(2)
    for site in lin.sites:
        torch.testing.assert_close(end.tensor(site, "omega"), lin.tensor(site, "omega"))
        torch.testing.assert_close(end.tensor(site, "bias"), lin.tensor(site, "bias"))
    assert any(not torch.equal(mid.tensor(s, "bias"), lin.tensor(s, "bias")) for s in lin.sites)
    assert len(mid.loss_frame()) == 2
    with pytest.raises(SteerError, match=r"no snapshot at step 3; this fit kept \[2, 4\]"):
        lin.at_snapshot(3)


def test_convergence_frames(model, two_sets):
    source, target = two_sets
    frames = lineas_convergence(model, source, target, list(reversed(source)), target,
                                schedules=(4, 2), config={"minibatch": 4},
                                evaluate_at_end=lambda s: {"mean_score": 0.5},
                                log=lambda msg: None)
    curve, points = frames["lineas_curve"], frames["lineas_checkpoints"]
    assert list(curve.groupby("schedule")["step"].max()) == [2, 4]
    assert set(points["step"][points["schedule"] == 4]) == {1, 2, 4}
    assert points["end"].sum() == 2 and points.loc[points["end"], "mean_score"].eq(0.5).all()
    assert (points["heldout_w2_unsteered"] > 0).all()
    with pytest.raises(ValueError, match="schedules must be positive step counts"):
        lineas_convergence(model, *two_sets, *two_sets, schedules=())


def test_convergence_cache_refits_only_new_schedules(model, two_sets, tmp_path):
    source, target = two_sets
    kw = dict(config={"minibatch": 4}, log=lambda msg: None, cache_dir=tmp_path)
    first = lineas_convergence(model, source, target, source, target, schedules=(2,), **kw)
    assert (tmp_path / "2" / "points.csv").exists()
    # A refit would fail, so schedule 2 must come from the cache and only 3 is fitted
    import steerinterp.analysis.convergence as conv
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conv, "make", lambda *a, **k: pytest.fail("refitted a cached schedule"))
        again = lineas_convergence(model, source, target, source, target, schedules=(2,), **kw)
    pd.testing.assert_frame_equal(again["lineas_checkpoints"], first["lineas_checkpoints"],
                                  check_dtype=False)
    both = lineas_convergence(model, source, target, source, target, schedules=(2, 3), **kw)
    assert list(both["lineas_checkpoints"].groupby("schedule").size().index) == [2, 3]


def test_figures_quick_lineas_convergence(model, tmp_path):
    paths = figures.make_figures(model, tmp_path / "figs", cache=tmp_path / "cache",
                                 only=["lineas_convergence"], size="quick",
                                 log=lambda msg: None)
    assert [p.stem for p in paths] == ["lineas_convergence"]
    df = pd.read_csv(paths[0].with_suffix(".csv"))
    assert {"heldout_ratio", "mean_score", "delta_ppl_rel"} <= set(df.columns)
    assert paths[0].stat().st_size > 2000
