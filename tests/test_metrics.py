"""Pure-math tests for steerinterp.metrics against sklearn, numpy and brute force."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import average_precision_score, roc_auc_score

from steerinterp.metrics import auroc, average_precision, quantiles, sorted_affine_fit, w2_sorted

FAST = settings(max_examples=60, deadline=None)


@st.composite
def scored(draw, tied: bool):
    """(acts [n, d], labels [n]) with both classes; ``tied``: few distinct integer values."""
    n = draw(st.integers(2, 40))
    d = draw(st.integers(1, 6))
    if tied:
        elems = st.integers(0, draw(st.integers(0, 3))).map(float)
    else:
        elems = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    acts = draw(hnp.arrays(np.float32, (n, d), elements=elems))
    labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, 1)))
    assume(0 < labels.sum() < n)
    return acts, labels


def per_column(metric, acts, labels):
    return np.array([metric(labels, acts[:, j]) for j in range(acts.shape[1])])


# -- AUROC ------------------------------------------------------------------------------------
@FAST
@given(data=st.one_of(scored(tied=False), scored(tied=True)))
def test_auroc_matches_sklearn(data):
    acts, labels = data
    got = auroc(torch.from_numpy(acts), torch.from_numpy(labels))
    assert got.dtype == torch.float64 and got.shape == (acts.shape[1],)
    np.testing.assert_allclose(got.numpy(), per_column(roc_auc_score, acts, labels), atol=1e-6)


@FAST
@given(data=scored(tied=True))
def test_auroc_equals_pair_count(data):
    acts, labels = data
    pos, neg = acts[labels == 1], acts[labels == 0]
    diff = pos[:, None, :] - neg[None, :, :]  # every (positive, negative) pair per unit
    brute = ((diff > 0) + 0.5 * (diff == 0)).mean((0, 1))
    np.testing.assert_allclose(auroc(acts, labels).numpy(), brute, atol=1e-12)


@FAST
@given(data=st.one_of(scored(tied=False), scored(tied=True)))
def test_auroc_of_negated_scores_is_complement(data):
    acts, labels = data
    np.testing.assert_allclose(auroc(-acts, labels).numpy(), 1 - auroc(acts, labels).numpy(),
                               atol=1e-12)


def test_auroc_extremes_and_input_types():
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    acts = torch.stack([labels * 5.0 + 1, -labels.float(), torch.ones(6)], 1)
    assert auroc(acts, labels).tolist() == [1.0, 0.0, 0.5]
    assert auroc(acts, labels.bool()).tolist() == [1.0, 0.0, 0.5]
    assert auroc(acts.numpy(), labels.float().numpy()).tolist() == [1.0, 0.0, 0.5]
    assert auroc(acts.to(torch.int32), labels).tolist() == [1.0, 0.0, 0.5]


def test_chunking_is_invisible(monkeypatch):
    import steerinterp.metrics as m
    rng = np.random.default_rng(0)
    acts, labels = rng.integers(0, 5, (30, 50)).astype(np.float32), rng.integers(0, 2, 30)
    whole = auroc(acts, labels), average_precision(acts, labels), sorted_affine_fit(acts, acts ** 2)
    monkeypatch.setattr(m, "_CHUNK_ELEMENTS", 30 * 7)  # 8 chunks, the last one partial
    assert torch.equal(auroc(acts, labels), whole[0])
    assert torch.equal(average_precision(acts, labels), whole[1])
    # Float sums may reorder across chunk widths: equal up to rounding, not bit for bit.
    torch.testing.assert_close(sorted_affine_fit(acts, acts ** 2), whole[2], rtol=1e-12, atol=1e-12)


def test_auroc_rejects_one_class():
    with pytest.raises(ValueError, match="AUROC needs both classes; got 3 positive and 0"):
        auroc(torch.randn(3, 2), torch.ones(3))


def test_auroc_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels must be 0/1 .*\[2"):
        auroc(torch.randn(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must be 0/1 .*\[-1.0, 0.5"):
        auroc(np.zeros((4, 1)), np.array([0, 1, 0.5, -1]))


def test_auroc_rejects_nan_and_names_units():
    acts = torch.randn(5, 4)
    acts[0, 1], acts[2, 1], acts[3, 3] = float("nan"), float("inf"), float("-inf")
    with pytest.raises(ValueError, match=r"acts has 3 NaN/inf values in 2 unit\(s\): \[1, 3\]"):
        auroc(acts, torch.tensor([0, 1, 0, 1, 0]))


def test_auroc_rejects_shape_mismatch():
    # With the pytest-only jaxtyping hook, the annotation catches this first (a TypeError that
    # also names ``labels``/``acts``); without it, the function's own ValueError does.
    with pytest.raises((ValueError, TypeError), match="labels"):
        auroc(torch.randn(5, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises((ValueError, TypeError), match="acts"):
        auroc(torch.randn(5), torch.tensor([0, 1, 0, 1, 1]))


# -- average precision ------------------------------------------------------------------------
@FAST
@given(data=st.one_of(scored(tied=False), scored(tied=True)))
def test_average_precision_matches_sklearn(data):
    acts, labels = data
    got = average_precision(acts, labels)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), per_column(average_precision_score, acts, labels),
                               atol=1e-6)


def test_average_precision_needs_a_positive():
    assert average_precision(np.array([[1.0], [2.0]]), np.array([1, 1])).tolist() == [1.0]
    with pytest.raises(ValueError, match="at least one positive"):
        average_precision(torch.randn(3, 2), torch.zeros(3))


# -- sorted affine fit (Linear-AcT) -----------------------------------------------------------
@FAST
@given(seed=st.integers(0, 2**31), n=st.integers(2, 50), d=st.integers(1, 5))
def test_sorted_affine_fit_recovers_increasing_affine_map(seed, n, d):
    g = torch.Generator().manual_seed(seed)
    source = torch.randn(n, d, generator=g, dtype=torch.float64)
    a, b = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.1, torch.randn(d, generator=g)
    assume(bool((source.amax(0) > source.amin(0)).all()))
    target = (a * source + b)[torch.randperm(n, generator=g)]  # row order must not matter
    omega, beta = sorted_affine_fit(source, target)
    assert omega.dtype == beta.dtype == torch.float64
    torch.testing.assert_close(omega, a, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(beta, b.double(), atol=1e-9, rtol=1e-9)


def test_sorted_affine_fit_equal_counts_is_sorted_least_squares():
    rng = np.random.default_rng(1)
    source, target = rng.normal(size=(40, 3)), rng.gamma(2.0, size=(40, 3))
    omega, beta = sorted_affine_fit(source.astype(np.float32), target)
    for j in range(3):
        slope, icpt = np.polyfit(np.sort(source[:, j].astype(np.float32)), np.sort(target[:, j]), 1)
        assert omega[j].item() == pytest.approx(slope, abs=1e-10)
        assert beta[j].item() == pytest.approx(icpt, abs=1e-10)


@pytest.mark.parametrize("n, m", [(30, 47), (47, 30), (1, 9)])
def test_sorted_affine_fit_unequal_counts_matches_hazen_quantiles(n, m):
    rng = np.random.default_rng(2)
    source, target = rng.normal(size=(n, 2)), rng.exponential(size=(m, 2)) + 3
    k = max(n, m)
    p = (np.arange(k) + 0.5) / k
    omega, beta = sorted_affine_fit(source, target)
    for j in range(2):
        qa = np.quantile(source[:, j], p, method="hazen")
        qb = np.quantile(target[:, j], p, method="hazen")
        slope, icpt = (np.polyfit(qa, qb, 1) if np.ptp(qa) > 0
                       else (1.0, target[:, j].mean() - source[:, j].mean()))
        assert omega[j].item() == pytest.approx(slope, abs=1e-10)
        assert beta[j].item() == pytest.approx(icpt, abs=1e-10)


def test_sorted_affine_fit_unequal_counts_approximates_the_map():
    g = torch.Generator().manual_seed(3)
    source, target = torch.randn(4000, 3, generator=g), 2.5 * torch.randn(2500, 3, generator=g) - 1
    omega, beta = sorted_affine_fit(source, target)
    torch.testing.assert_close(omega, torch.full((3,), 2.5, dtype=torch.float64), atol=0.15, rtol=0)
    torch.testing.assert_close(beta, torch.full((3,), -1.0, dtype=torch.float64), atol=0.15, rtol=0)


def test_sorted_affine_fit_constant_source_is_a_shift():
    source = torch.tensor([[0.1, 0.0], [0.1, 1.0], [0.1, 2.0]])
    target = torch.tensor([[1.0, 5.0], [2.0, 7.0], [4.0, 9.0]])
    omega, beta = sorted_affine_fit(source, target)
    assert omega.tolist() == [1.0, 2.0]
    torch.testing.assert_close(beta, torch.tensor([7 / 3 - 0.1, 5.0], dtype=torch.float64))


def test_sorted_affine_fit_decreasing_map_gives_the_monotone_one():
    # OT maps in 1-D are non-decreasing: target = -2·source + 1 is fitted as +2·source + 1 when
    # the source is symmetric, and ω ≥ 0 always.
    x = torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    source = torch.cat([x, -x])
    omega, beta = sorted_affine_fit(source, -2 * source + 1)
    torch.testing.assert_close(omega, torch.full((4,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(beta, torch.full((4,), 1.0, dtype=torch.float64))
    omega, _ = sorted_affine_fit(x, -3 * x ** 3)
    assert (omega >= 0).all()


def test_sorted_affine_fit_rejects_bad_input():
    with pytest.raises((ValueError, TypeError), match="target"):
        sorted_affine_fit(torch.randn(5, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"source has 1 NaN/inf values in 1 unit\(s\): \[0\]"):
        sorted_affine_fit(torch.tensor([[float("nan")], [1.0]]), torch.randn(2, 1))
    with pytest.raises(ValueError, match="needs samples on both sides"):
        sorted_affine_fit(torch.randn(0, 2), torch.randn(3, 2))


# -- W2 of sorted samples (LinEAS) ------------------------------------------------------------
@FAST
@given(n=st.integers(1, 6), d=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_w2_sorted_is_the_best_pairing(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g,
                                                                           dtype=torch.float64)
    brute = torch.stack([
        min(((u[:, j] - v[list(perm), j]) ** 2).mean() for perm in itertools.permutations(range(n)))
        for j in range(d)])
    torch.testing.assert_close(w2_sorted(u, v), brute)


def test_w2_sorted_gradient_flows_and_dtypes():
    u = torch.randn(8, 3, requires_grad=True)
    loss = w2_sorted(u, torch.randn(8, 3)).sum()
    loss.backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    assert w2_sorted(u.detach(), u.detach()).tolist() == [0.0] * 3
    assert w2_sorted(u.detach().bfloat16(), u.detach().bfloat16()).dtype == torch.float32
    assert w2_sorted(u.detach().double(), u.detach()).dtype == torch.float64


def test_w2_sorted_requires_equal_sizes():
    with pytest.raises((ValueError, TypeError), match="w2_sorted"):
        w2_sorted(torch.randn(6, 3), torch.randn(4, 3))


# -- quantiles --------------------------------------------------------------------------------
def test_quantiles_match_torch_and_give_support():
    x = torch.randn(37, 5, generator=torch.Generator().manual_seed(5))
    qs = [0.0, 0.01, 0.5, 0.9, 1.0]
    got = quantiles(x, qs)
    assert got.shape == (5, 5) and got.dtype == torch.float64
    torch.testing.assert_close(got, torch.quantile(x.double(), torch.tensor(qs).double(), dim=0))
    assert torch.equal(got[0], x.amin(0).double()) and torch.equal(got[-1], x.amax(0).double())
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        quantiles(x, [0.5, 1.5])
