"""Cluster-robust means and paired condition differences over generation frames."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steerinterp.evaluate.stats import (clustered_mean, mean_from_totals, paired_differences,
                                        summarize_generations)

scores = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def balanced(draw, max_prompts=8, max_samples=5):
    """(values, clusters) with every prompt drawn the same number of times."""
    g = draw(st.integers(2, max_prompts))
    m = draw(st.integers(1, max_samples))
    values = draw(st.lists(scores, min_size=g * m, max_size=g * m))
    return np.array(values), np.repeat(np.arange(g), m)


@st.composite
def unbalanced(draw):
    sizes = draw(st.lists(st.integers(1, 4), min_size=2, max_size=8))
    values = draw(st.lists(scores, min_size=sum(sizes), max_size=sum(sizes)))
    return np.array(values), np.repeat(np.arange(len(sizes)), sizes)


def _frame(rng, n_prompts=4, n_samples=3, conditions=("unsteered", "aura")):
    rows = [{"condition": c, "prompt_id": p, "sample": s, "score": rng.uniform()}
            for c in conditions for p in range(n_prompts) for s in range(n_samples)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- cluster-robust SE


@settings(max_examples=50, deadline=None)
@given(balanced())
def test_balanced_clusters_equal_two_stage_formula(data):
    values, clusters = data
    mean, se = clustered_mean(values, clusters)
    prompt_means = pd.Series(values).groupby(clusters).mean()
    assert mean == pytest.approx(prompt_means.mean(), abs=1e-12)
    expected = prompt_means.std(ddof=1) / math.sqrt(len(prompt_means))
    assert se == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(scores, min_size=2, max_size=30))
def test_one_sample_per_cluster_is_the_ordinary_se(values):
    values = np.array(values)
    _, se = clustered_mean(values, np.arange(len(values)))
    assert se == pytest.approx(values.std(ddof=1) / math.sqrt(len(values)), rel=1e-9, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(unbalanced(), st.randoms(use_true_random=False))
def test_se_ignores_row_order_and_cluster_labels(data, rnd):
    values, clusters = data
    order = list(range(len(values)))
    rnd.shuffle(order)
    relabel = {c: f"p{rnd.randint(0, 99)}-{c}" for c in np.unique(clusters)}  # distinct labels
    shuffled = clustered_mean(values[order], [relabel[c] for c in clusters[order]])
    assert shuffled == pytest.approx(clustered_mean(values, clusters), rel=1e-9, abs=1e-12)


def test_unbalanced_hand_example():
    # clusters A=[1,0], B=[1], C=[0,0,1]: mean 3/6; residual sums T_g − ȳN_g = 0, .5, −.5;
    # V = G/(G−1)·Σ/N² = 1.5 · 0.5 / 36
    mean, se = clustered_mean([1, 0, 1, 0, 0, 1], ["A", "A", "B", "C", "C", "C"])
    assert mean == 0.5
    assert se == pytest.approx(math.sqrt(1.5 * 0.5 / 36))
    assert mean_from_totals([1, 1, 1], [2, 1, 3]) == pytest.approx((mean, se))


def test_one_cluster_has_no_se():
    mean, se = clustered_mean([0.2, 0.4], [7, 7])
    assert mean == pytest.approx(0.3) and math.isnan(se)


# --------------------------------------------------------------------------- summaries


def test_summary_per_condition_in_order_of_appearance():
    df = pd.DataFrame({"condition": ["b", "b", "b", "a", "a", "a"],
                       "prompt_id": [0, 0, 1, 0, 0, 1], "sample": [0, 1, 0, 0, 1, 0],
                       "score": [0.9, 0.5, 0.1, 0.2, 0.6, 0.7]})
    out = summarize_generations(df)
    assert list(out["condition"]) == ["b", "a"]
    b = out.iloc[0]
    assert (b["n_prompts"], b["n_samples"]) == (2, 3)
    assert b["mean_score"] == pytest.approx(0.5)
    assert b["toxic_share"] == pytest.approx(1 / 3)  # 0.5 is not > 0.5
    # residual sums: prompt 0: (0.9+0.5) − 0.5·2 = 0.4, prompt 1: 0.1 − 0.5 = −0.4
    assert b["mean_score_se"] == pytest.approx(math.sqrt(2 * 0.32 / 9))
    assert list(out.columns) == ["condition", "n_prompts", "n_samples", "mean_score",
                                 "mean_score_se", "toxic_share", "toxic_share_se"]


def test_summary_without_condition_column_is_one_row():
    df = pd.DataFrame({"prompt_id": [0, 1, 2], "sample": 0, "score": [0.2, 0.8, 0.6]})
    out = summarize_generations(df, threshold=0.7)
    assert len(out) == 1 and "condition" not in out.columns
    assert out.loc[0, "toxic_share"] == pytest.approx(1 / 3)
    expected = np.std([0.2, 0.8, 0.6], ddof=1) / math.sqrt(3)
    assert out.loc[0, "mean_score_se"] == pytest.approx(expected)


# --------------------------------------------------------------------------- paired differences


def test_paired_hand_example():
    df = pd.DataFrame({"condition": ["unsteered"] * 4 + ["lineas"] * 4,
                       "prompt_id": [0, 0, 1, 1] * 2, "sample": [0, 1] * 4,
                       "score": [0.1, 0.6, 0.3, 0.4, 0.2, 0.6, 0.5, 0.4]})
    row = paired_differences(df).iloc[0]
    assert row["condition"] == "lineas" and (row["n_prompts"], row["n_pairs"]) == (2, 4)
    # differences [.1, 0 | .2, 0]: prompt means .05, .1 → mean .075, SE = std/√2 = .025
    assert row["diff_mean_score"] == pytest.approx(0.075)
    assert row["diff_mean_score_se"] == pytest.approx(0.025)
    assert row["z"] == pytest.approx(3.0)
    assert row["p_value"] == pytest.approx(0.0026998, abs=1e-6)
    assert row["ratio_mean_score"] == pytest.approx(1.7 / 1.4)
    assert row["diff_toxic_share"] == 0.0 and row["ratio_toxic_share"] == 1.0


def test_ratio_of_toxic_share_is_nan_without_baseline_toxicity():
    df = pd.DataFrame({"condition": ["unsteered"] * 2 + ["x"] * 2, "prompt_id": [0, 1] * 2,
                       "sample": 0, "score": [0.1, 0.2, 0.9, 0.2]})
    row = paired_differences(df).iloc[0]
    assert math.isnan(row["ratio_toxic_share"]) and row["diff_toxic_share"] == 0.5


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(1, 4), st.randoms(use_true_random=False))
def test_paired_difference_is_difference_of_means(n_prompts, n_samples, rnd):
    df = _frame(np.random.default_rng(rnd.randint(0, 2**32 - 1)), n_prompts, n_samples,
                ("unsteered", "aura", "lineas"))
    shuffled = df.sample(frac=1, random_state=rnd.randint(0, 2**32 - 1))
    out = paired_differences(shuffled).set_index("condition")
    summary = summarize_generations(df).set_index("condition")
    for name in ("aura", "lineas"):
        diff = summary.loc[name, "mean_score"] - summary.loc["unsteered", "mean_score"]
        assert out.loc[name, "diff_mean_score"] == pytest.approx(diff, abs=1e-12)
        share = summary.loc[name, "toxic_share"] - summary.loc["unsteered", "toxic_share"]
        assert out.loc[name, "diff_toxic_share"] == pytest.approx(share, abs=1e-12)
    unshuffled = paired_differences(df).set_index("condition")
    pd.testing.assert_frame_equal(out.sort_index(), unshuffled.sort_index())  # order-free


def test_pairing_removes_shared_prompt_variance():
    # A constant shift of a noisy baseline is detected with zero uncertainty.
    base = _frame(np.random.default_rng(0), conditions=("unsteered",))
    shifted = base.assign(condition="shift", score=base["score"] * 0.5)
    zero = base.assign(condition="same")
    out = paired_differences(pd.concat([base, shifted, zero])).set_index("condition")
    assert out.loc["same", "diff_mean_score_se"] == 0 and math.isnan(out.loc["same", "z"])
    assert out.loc["shift", "ratio_mean_score"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- bad input


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"\['sample', 'condition'\]"):
        paired_differences(pd.DataFrame({"prompt_id": [0], "score": [0.1]}))
    with pytest.raises(ValueError, match="score"):
        summarize_generations(pd.DataFrame({"prompt_id": [0]}))
    with pytest.raises(TypeError, match="DataFrame"):
        summarize_generations([0.1, 0.2])


def test_missing_baseline_is_named():
    df = _frame(np.random.default_rng(0), conditions=("aura", "lineas"))
    with pytest.raises(ValueError, match=r"'unsteered' not found.*\['aura', 'lineas'\]"):
        paired_differences(df)


def test_unpaired_condition_is_named_with_counts():
    df = _frame(np.random.default_rng(0), n_prompts=4, n_samples=3)
    df = df.drop(df.index[(df["condition"] == "aura") & (df["prompt_id"] == 2)])
    with pytest.raises(ValueError, match=r"'aura'.* 3 of the baseline's 12 .* missing"):
        paired_differences(df)


def test_duplicated_pairs_nan_and_out_of_range_scores_are_refused():
    df = _frame(np.random.default_rng(0))
    with pytest.raises(ValueError, match="duplicated"):
        paired_differences(pd.concat([df, df.iloc[:1]]))
    nan = df.copy()
    nan.loc[3, "score"] = np.nan
    with pytest.raises(ValueError, match="1 score.*NaN"):
        summarize_generations(nan)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        paired_differences(df.assign(score=df["score"] * 10))
    with pytest.raises(ValueError, match="no rows"):
        summarize_generations(df.iloc[:0])
