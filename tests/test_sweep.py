"""Evaluation harness, sweeps, Pareto fronts and calibration on the tiny model (fast)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from steerinterp.evaluate.harness import Evaluation, compare, evaluate
from steerinterp.evaluate.perplexity import perplexity
from steerinterp.evaluate.sweep import calibrate, pareto_front, sweep
from steerinterp.steer import make
from tiny_texts import PPL, PROMPTS, SETTINGS, SOURCE, TARGET, length_scorer


@pytest.fixture(scope="module")
def shift(tiny_gpt2):
    return make("mean_shift", sites="all.mlp_out").fit(tiny_gpt2, SOURCE, TARGET)


def test_evaluate_summary_has_the_documented_numbers(tiny_gpt2, shift):
    ev = evaluate(tiny_gpt2, shift, prompts=PROMPTS, ppl_texts=PPL, settings=SETTINGS,
                  scorer=length_scorer, progress=False)
    s = ev.summary()
    for key in ("toxic_share", "toxic_share_se", "mean_score", "mean_score_se", "ppl",
                "n_prompts", "n_samples"):
        assert key in s and s[key] is not None
    assert s["n_prompts"] == 4 and s["n_samples"] == 8 and s["ppl"] > 1
    assert 0 <= s["mean_score"] <= 1


def test_evaluation_resumes_from_its_folder(tiny_gpt2, shift, tmp_path, monkeypatch):
    kw = dict(prompts=PROMPTS, ppl_texts=PPL, settings=SETTINGS, scorer=length_scorer,
              progress=False, folder=tmp_path / "c")
    first = evaluate(tiny_gpt2, shift, strength=0.5, **kw)
    import steerinterp.evaluate.harness as harness
    monkeypatch.setattr(harness, "generate", lambda *a, **k: pytest.fail("recomputed"))
    again = evaluate(tiny_gpt2, shift, strength=0.5, **kw)
    pd.testing.assert_frame_equal(first.perplexity, again.perplexity)
    assert first.summary() == again.summary()
    monkeypatch.undo()
    # Another strength is another condition: the saved one is not reused.
    other = evaluate(tiny_gpt2, shift, strength=1.0, **kw)
    assert other.strength == 1.0


def test_damaged_evaluation_is_recomputed(tiny_gpt2, tmp_path):
    kw = dict(prompts=PROMPTS[:2], ppl_texts=PPL[:2], settings=SETTINGS, scorer=length_scorer,
              progress=False, folder=tmp_path / "c")
    first = evaluate(tiny_gpt2, **kw)
    (tmp_path / "c" / "perplexity.csv").write_text("garbage\x00")
    assert Evaluation.load(tmp_path / "c") is None
    again = evaluate(tiny_gpt2, **kw)
    assert again.summary()["ppl"] == pytest.approx(first.summary()["ppl"])


def test_sweep_is_paired_and_tidy(tiny_gpt2, shift):
    frame = sweep(tiny_gpt2, {"shift": shift}, [0.0, 1.0], PROMPTS, PPL, SETTINGS,
                  scorer=length_scorer, progress=False)
    assert list(frame["condition"]) == ["unsteered", "shift@0", "shift@1"]
    assert list(frame["strength"]) == [0.0, 0.0, 1.0]
    zero = frame.set_index("condition").loc["shift@0"]
    # λ = 0 is the identity: same prompts, same seeds → exactly no difference.
    assert zero["diff_mean_score"] == 0 and zero["diff_mean_score_se"] == 0
    assert zero["delta_ppl"] == pytest.approx(0, abs=1e-6)
    one = frame.set_index("condition").loc["shift@1"]
    assert one["delta_ppl"] != 0 and math.isfinite(one["ratio_mean_score"])


def test_sweep_rejects_a_strength_outside_the_range(tiny_gpt2, shift):
    with pytest.raises(ValueError, match=r"outside mean_shift's range"):
        sweep(tiny_gpt2, {"shift": shift}, [1.5], PROMPTS, PPL, SETTINGS, scorer=length_scorer)
    with pytest.raises(ValueError, match="outside"):
        sweep(tiny_gpt2, {"shift": shift}, [-0.5], PROMPTS, PPL, SETTINGS, scorer=length_scorer)


def test_compare_needs_the_baseline(tiny_gpt2, shift):
    ev = evaluate(tiny_gpt2, shift, prompts=PROMPTS[:2], ppl_texts=PPL[:2], settings=SETTINGS,
                  scorer=length_scorer, progress=False, condition="s")
    with pytest.raises(ValueError, match="no 'unsteered' condition"):
        compare([ev])


def test_pareto_front_hand_example():
    frame = pd.DataFrame({"condition": list("abcde"), "ppl": [10, 11, 12, 11, 15],
                          "mean_score": [0.5, 0.3, 0.3, 0.4, 0.1]})
    front = pareto_front(frame)
    assert list(front["condition"]) == ["a", "b", "e"]  # c is dominated by b, d by b
    with pytest.raises(ValueError, match="no column 'toxicity'"):
        pareto_front(frame, y="toxicity")


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"ppl": rng.integers(0, 5, 40), "mean_score": rng.integers(0, 5, 40)})
    front = pareto_front(frame)
    pts = [tuple(p) for p in frame[["ppl", "mean_score"]].to_numpy()]
    undominated = {p for p in pts
                   if not any(a <= p[0] and b <= p[1] and (a, b) != p for a, b in pts)}
    assert {tuple(p) for p in front[["ppl", "mean_score"]].to_numpy()} == undominated


@pytest.fixture(scope="module")
def costly(tiny_gpt2):
    """A shift that raises the random model's perplexity (+40% at λ = 1), steadily in λ."""
    big = make("mean_shift", sites="all.mlp_out").fit(tiny_gpt2, TARGET, SOURCE)
    with torch.no_grad():
        for p in big.tensors.values():
            p.mul_(5)
    return big


def test_calibrate_stays_within_budget_and_is_tight(tiny_gpt2, costly):
    shift = costly
    base = perplexity(tiny_gpt2, PPL, progress=False)["ppl"].mean()
    full = perplexity(tiny_gpt2, PPL, shift, strength=1.0, progress=False)["ppl"].mean()
    rise = full / base - 1
    assert rise > 0.001, "the tiny shift must cost perplexity for this test to mean anything"
    budget = rise / 3
    cal = calibrate(tiny_gpt2, shift, PPL, ppl_budget=budget, tol=0.01, max_evals=12)
    assert 0 < cal.strength < 1 and not cal.saturated
    assert cal.delta_ppl_rel <= budget
    # Tight: a little more strength breaks the budget (the path shows the bracket).
    over = cal.path[cal.path["strength"] > cal.strength]
    assert (over["delta_ppl_rel"] > budget).all()
    assert over["strength"].min() - cal.strength <= 0.02


def test_calibrate_saturates_when_everything_is_within_budget(tiny_gpt2, shift):
    cal = calibrate(tiny_gpt2, shift, PPL, ppl_budget=5.0)
    assert cal.saturated and cal.strength == 1.0 and len(cal.path) == 1


def test_calibrate_rejects_a_bad_budget(tiny_gpt2, shift):
    with pytest.raises(ValueError, match="relative increase"):
        calibrate(tiny_gpt2, shift, PPL, ppl_budget=-0.1)


def test_a_steerer_named_like_the_baseline_is_refused(tiny_gpt2, shift):
    with pytest.raises(ValueError, match="'unsteered' names the unsteered baseline"):
        sweep(tiny_gpt2, {"unsteered": shift}, [1.0], PROMPTS, PPL, SETTINGS,
              scorer=length_scorer, progress=False)
