"""The main job (``steerinterp run``) at smoke size on the tiny model: outputs, resuming, errors."""

import json
import math
import re

import pandas as pd
import pytest

import steerinterp.experiments.job as job
from steerinterp.experiments.job import METHODS, JobSpec, run_job
from steerinterp.models import load_model

QUIET = dict(progress=False, log=lambda msg: None)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-gpt2")


@pytest.fixture(scope="module")
def full_run(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, run_job(model, JobSpec("tiny-gpt2", fit_set="wiki", size="smoke"), out, **QUIET)


def test_run_evaluates_every_method_and_writes_the_report(full_run):
    out, frame = full_run
    assert set(frame["method"]) == {"unsteered", *METHODS}
    for col in ("condition", "strength", "rule", "sites", "toxic_share", "toxic_share_se",
                "mean_score", "mean_score_se", "ppl", "delta_ppl_rel", "diff_mean_score",
                "fit_seconds"):
        assert col in frame.columns, col
    steered = frame[frame["method"] != "unsteered"]
    assert steered["ppl"].map(math.isfinite).all() and (steered["fit_seconds"] > 0).all()
    saved = pd.read_csv(out / "results.csv")
    assert list(saved["condition"]) == list(frame["condition"])
    report = (out / "report.md").read_text()
    assert "| method | λ | toxic % | mean score ± se | tox. cut |" in report
    assert all(f"| {m} |" in report for m in METHODS)
    for name in ("pareto", "methods"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert (out / "figures" / f"{name}.csv").exists()


def test_calibrated_rows_respect_the_budget_on_calibration_text(full_run):
    out, frame = full_run
    paths = sorted((out / "calibration").glob("*/calibration.json"))
    assert {p.parent.name for p in paths} == set(METHODS)  # every method was calibrated
    for path in paths:
        cal = json.loads(path.read_text())
        assert cal["delta_ppl_rel"] <= 0.10 + 1e-9


def test_rerun_resumes_without_refitting_or_regenerating(model, full_run, monkeypatch):
    out, frame = full_run
    import steerinterp.evaluate.harness as harness
    monkeypatch.setattr(harness, "generate", lambda *a, **k: pytest.fail("regenerated"))
    monkeypatch.setattr(job, "make", lambda *a, **k: pytest.fail("refitted"))
    again = run_job(model, JobSpec("tiny-gpt2", fit_set="wiki", size="smoke"), out, **QUIET)
    pd.testing.assert_frame_equal(again.drop(columns="fit_seconds"),
                                  frame.drop(columns="fit_seconds"))


def test_interrupted_run_resumes_from_what_was_saved(model, tmp_path, monkeypatch):
    spec = JobSpec("tiny-gpt2", fit_set="wiki", size="smoke", methods=("mean_shift", "aura"), ppl_budget=None)
    import steerinterp.evaluate.harness as harness
    real_generate = harness.generate

    def crash_on_aura(m, prompts, *steerers, **k):
        if steerers and steerers[0].method == "aura":
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the last condition
        return real_generate(m, prompts, *steerers, **k)

    monkeypatch.setattr(harness, "generate", crash_on_aura)
    with pytest.raises(KeyboardInterrupt):
        run_job(model, spec, tmp_path, **QUIET)
    assert (tmp_path / "conditions" / "mean_shift@1" / "summary.json").exists()
    assert not (tmp_path / "conditions" / "aura@1" / "summary.json").exists()
    assert not (tmp_path / "results.csv").exists()
    calls = []
    monkeypatch.setattr(harness, "generate",
                        lambda m, prompts, *s, **k: calls.append(s) or real_generate(
                            m, prompts, *s, **k))
    frame = run_job(model, spec, tmp_path, **QUIET)
    assert len(calls) == 1 and calls[0][0].method == "aura"  # only the missing condition
    assert list(frame["condition"]) == ["unsteered", "mean_shift@1", "aura@1"]


def test_an_interrupted_fit_keeps_the_steerers_already_fitted(model, tmp_path, monkeypatch):
    spec = JobSpec("tiny-gpt2", fit_set="wiki", size="smoke", methods=("mean_shift", "aura"),
                   ppl_budget=None)
    real_fit = job.fit_or_load

    def fit_then_crash(model, name, *args):
        if name == "aura":
            raise KeyboardInterrupt  # Ctrl-C during the second fit
        return real_fit(model, name, *args)

    monkeypatch.setattr(job, "fit_or_load", fit_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_job(model, spec, tmp_path, **QUIET)
    assert (tmp_path / "steerers" / "mean_shift" / "config.json").exists()
    from steerinterp.steer import load_steerer
    assert load_steerer(tmp_path / "steerers" / "mean_shift").fitted


def test_a_damaged_saved_steerer_is_refitted(model, tmp_path, monkeypatch):
    spec = JobSpec("tiny-gpt2", fit_set="wiki", size="smoke", methods=("mean_shift",), ppl_budget=None)
    run_job(model, spec, tmp_path, **QUIET)
    state = tmp_path / "steerers" / "mean_shift" / "state.safetensors"
    good = state.read_bytes()
    state.write_bytes(b"\x00" * 10)
    fits = []
    real_make = job.make
    monkeypatch.setattr(job, "make", lambda *a, **k: fits.append(a) or real_make(*a, **k))
    frame = run_job(model, spec, tmp_path, **QUIET)
    assert fits == [("mean_shift",)]  # refitted, once
    assert state.read_bytes() == good  # the same seeded fit, saved over the damaged file
    assert "mean_shift@1" in set(frame["condition"])


def test_folder_with_another_run_is_refused(model, tmp_path):
    run_job(model, JobSpec("tiny-gpt2", fit_set="wiki", size="smoke", methods=("aura",), ppl_budget=None),
            tmp_path, **QUIET)
    other = JobSpec("tiny-gpt2", fit_set="wiki", size="smoke", methods=("aura",), seed=1, ppl_budget=None)
    with pytest.raises(ValueError, match=r"other settings \(seed\)"):
        run_job(model, other, tmp_path, **QUIET)
    frame = run_job(model, other, tmp_path, fresh=True, **QUIET)
    assert len(frame) == 2


def test_unwritable_results_folder_is_a_clear_error(model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot create directory"):
        run_job(model, JobSpec("tiny-gpt2", fit_set="wiki", size="smoke"), blocker / "results", **QUIET)


def test_bad_specs_name_the_problem():
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        JobSpec("tiny-gpt2", fit_set="wiki", size="huge")
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['actadd2'\]"):
        JobSpec("tiny-gpt2", fit_set="wiki", methods=("actadd2",))
    with pytest.raises(ValueError, match="relative increase"):
        JobSpec("tiny-gpt2", fit_set="wiki", ppl_budget=20)
    with pytest.raises(ValueError, match="unknown fit set 'jigsaw'"):
        JobSpec("tiny-gpt2", fit_set="jigsaw")
    with pytest.raises(ValueError, match="unknown sampling 'nucleus'; choose one of default"):
        JobSpec("tiny-gpt2", fit_set="wiki", sampling="nucleus")


def test_act_sampling_protocol_is_the_preset_whole(model, tmp_path):
    spec = JobSpec("tiny-gpt2", fit_set="wiki", size="smoke", methods=("mean_shift",),
                   ppl_budget=None, sampling="act")
    g = job.generation_settings(model, spec)
    assert (g.max_new_tokens, g.top_p, g.repetition_penalty, g.samples) == (32, 0.3, 1.2, 1)
    default = job.generation_settings(model, JobSpec("tiny-gpt2", fit_set="wiki", size="smoke"))
    assert (default.max_new_tokens, default.samples) == (6, 1)  # the size's
    run_job(model, spec, tmp_path, **QUIET)
    report = (tmp_path / "report.md").read_text()
    assert "--sampling act" in report and "AcT's protocol" in report


@pytest.mark.parametrize("fit_set", ["wiki", "mixed"])
def test_fit_and_eval_sets_are_disjoint(model, fit_set):
    data = job.job_data(model, JobSpec("tiny-gpt2", fit_set=fit_set, size="smoke"))
    assert not set(data.source) & set(data.prompts)
    assert not set(data.ppl_texts) & set(data.calib_texts)
    assert not set(data.target) & (set(data.ppl_texts) | set(data.calib_texts) | set(data.control))


def test_stage_clock_counts_stages_and_prices_the_rest():
    from steerinterp.evaluate.progress import StageClock

    lines = []
    clock = StageClock({"fit": 2, "evaluate": 3}, log=lines.append)
    with clock.stage("evaluate", "unsteered"):
        pass
    clock.times["evaluate"][-1] = 10.0  # pretend the first evaluation took 10 s
    with clock.stage("fit", "a: fitting"):
        pass
    clock.skip("evaluate")
    with clock.stage("evaluate", "a: λ = 1"):
        pass
    assert lines[0].startswith("[run 1/5, 0s] unsteered")  # no ETA before a stage is timed
    assert "ETA ~40s] a: fitting" in lines[1]  # 2 fits + 2 evaluations at the 10 s mean
    assert lines[2].startswith("[run 3/4,")  # a skipped stage leaves the plan
    assert clock.eta() == 10.0  # the 0-second fit (restored from disk) is not a price


def test_demo_command_prints_the_results_table(tmp_path):
    from typer.testing import CliRunner

    from steerinterp.cli import app

    result = CliRunner().invoke(app, ["demo", "--model", "tiny-gpt2", "--size", "smoke",
                                      "--fit-set", "wiki", "-o", str(tmp_path)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in (*job.DEMO_METHODS, "toxic %", "mean score", "ΔPPL", "report.md"):
        assert name in result.output, name
    # One progress line per stage; the ETA itself is tested on a fake clock above (on a fast
    # machine every tiny-model stage is under the 1 s "restored" cut, so none is priced).
    # (searched, not matched per line: a fit's progress bar may share the line before it)
    stages = set(re.findall(r"\[run (\d+)/(\d+), \d+", result.output))
    assert len(stages) == 1 + 2 * len(job.DEMO_METHODS)  # unsteered, then a fit and a λ each
