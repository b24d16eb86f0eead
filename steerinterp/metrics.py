"""Pure tensor math shared by steering methods and analyses (METHODS.md §3, §4.1, §5.2).

Every function works column-wise: rows are samples (pooled sentences), columns are units, and
all units are handled at once (no Python loop over units). Inputs may be torch tensors or numpy
arrays; results live on the input's device.

* :func:`auroc` — exact Mann–Whitney AUROC per unit, average ranks for ties (= sklearn
  ``roc_auc_score``) [AurA; METHODS §3].
* :func:`average_precision` — step-wise AP per unit (= sklearn ``average_precision_score``)
  [self-conditioning Det0; METHODS §3, §7].
* :func:`sorted_affine_fit` — Linear-AcT's per-unit 1-D OT affine map [AcT §3.1; METHODS §4.1].
* :func:`w2_sorted` — per-unit squared 1-D Wasserstein-2 of sorted samples, differentiable
  [LinEAS; METHODS §5.2].
* :func:`quantiles` — per-unit quantiles, e.g. the transport support [AcT App. E; METHODS §4.2].

Large inputs are processed in chunks of units so that temporary memory stays near
``_CHUNK_ELEMENTS`` elements per working array (e.g. 512 rows × 262,144 units runs as 32 chunks
of 8,192 units, roughly 120 MB of scratch at a time; float64 paths about twice that).
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Float64, Real, Shaped

__all__ = ["auroc", "average_precision", "quantiles", "sorted_affine_fit", "w2_sorted"]

# Elements (rows × units) per chunk: sorting keeps values + int64 indices, ranks add int32 arrays
# (~30 bytes per element in all, ~120 MB per chunk).
_CHUNK_ELEMENTS = 1 << 22

Acts = Real[torch.Tensor, "n d"] | Real[np.ndarray, "n d"]
Labels = Shaped[torch.Tensor, "n"] | Shaped[np.ndarray, "n"]


# -- input checks -----------------------------------------------------------------------------
def _tensor(x) -> torch.Tensor:
    """Wrap without copying, except read-only numpy arrays (memory maps): torch warns on those."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()
    return torch.as_tensor(x)


def _as_2d(x, name: str, check_finite: bool = True) -> torch.Tensor:
    """``x`` as a 2-D real tensor; NaN/inf rejected unless ``check_finite`` is off."""
    x = _tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [samples, units], got shape {tuple(x.shape)}"
                         + ("; use x[:, None] for a single unit" if x.ndim == 1 else ""))
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
    if check_finite and x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bad.any():
            units = bad.any(0).nonzero().flatten().tolist()
            raise ValueError(f"{name} has {int(bad.sum())} NaN/inf values in {len(units)} unit(s): "
                             f"{units[:10]}{' ...' if len(units) > 10 else ''}")
    return x


def _as_labels(labels, n: int, device: torch.device) -> torch.Tensor:
    """Binary labels as a bool tensor on ``device``; rejects anything but 0/1 and length ≠ n."""
    y = _tensor(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match acts' {n} rows, "
                         f"got shape {tuple(y.shape)}")
    if y.dtype != torch.bool:
        ok = (y == 0) | (y == 1)
        if not ok.all():
            found = torch.unique(y[~ok])[:5].tolist()
            raise ValueError(f"labels must be 0/1 (or bool), found other values {found}")
        y = y == 1
    return y.to(device)


def _chunks(n_rows: int, n_units: int):
    """Unit slices whose rows × units stay near ``_CHUNK_ELEMENTS``."""
    step = max(1, _CHUNK_ELEMENTS // max(n_rows, 1))
    return (slice(i, min(i + step, n_units)) for i in range(0, n_units, step))


def _tie_bounds(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last index (int32) of each element's tie group, rows ``s`` sorted along dim 1."""
    n = s.shape[1]
    pos = torch.arange(n, device=s.device, dtype=torch.int32).expand_as(s)
    differs = s[:, 1:] != s[:, :-1]
    tied = (~differs).any(1).nonzero().flatten()
    if tied.numel() == 0:
        return pos, pos
    # Scan only the units that have ties (few, for float activations): the scans cost about as
    # much as the sort itself.
    start, end, pos_t = pos.clone(), pos.clone(), pos[tied]
    true = torch.ones_like(differs[tied, :1])
    new = torch.cat([true, differs[tied]], 1)    # element starts a tie group
    last = torch.cat([differs[tied], true], 1)   # element ends a tie group
    start[tied] = torch.where(new, pos_t, 0).cummax(1).values
    end[tied] = torch.where(last, pos_t, n).flip(1).cummin(1).values.flip(1)
    return start, end


# -- ranking metrics --------------------------------------------------------------------------
# torch.sort of [units, rows] with indices costs ~22 ns per element on 2 threads (gemma-3-270m
# MLP units, 512 rows, AVX-512 CPU); numpy's argsort + sort (x86-simd-sort) take about a third
# of that on one thread but hold the GIL, so they do not scale with threads. At or below this
# many torch threads numpy is used on CPU; above it torch's parallel sort wins. Both give the
# same sorted values and tie groups, so results are identical either way.
_NUMPY_SORT_MAX_THREADS = 4
_NUMPY_SORTABLE = {torch.float16, torch.float32, torch.float64, torch.int8, torch.int16,
                   torch.int32, torch.int64, torch.uint8}


def _sort_units(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [n, c]`` as ``[c, n]`` rows sorted ascending: ``(values, indices)``.

    Units as rows: sorting a contiguous last dim is much faster than sorting along dim 0.
    The order inside a group of equal values is unspecified (callers treat ties as groups).
    """
    c = x.T.contiguous()
    if (c.device.type == "cpu" and c.dtype in _NUMPY_SORTABLE
            and torch.get_num_threads() <= _NUMPY_SORT_MAX_THREADS):
        a = c.detach().numpy()
        # Sorting the values again is cheaper than gathering them through the permutation.
        return torch.from_numpy(np.sort(a, axis=1)), torch.from_numpy(np.argsort(a, axis=1))
    return torch.sort(c, dim=1)


def _rank_sum2(s: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Per row, twice the sum of the 1-based average ranks of the positives (an exact int64).

    ``s [c, n]``: rows sorted ascending; ``pos [c, n]``: bool labels in that sorted order.
    Without ties the ranks are the positions 1..n (a matrix-vector product, exact in float
    while n(n+1)/2 fits the mantissa). A tie group at positions a..b gives each member the
    average (a + b)/2 instead of its position, so only the tied elements (few, for float
    activations) are visited to correct the sum: 2·Σ_group pos·rank = k(a + b) − 2·Σ pos·i.
    """
    units, n = s.shape
    exact = torch.float32 if n * (n + 1) // 2 < 2 ** 24 else torch.float64
    ranks = torch.arange(1, n + 1, device=s.device, dtype=exact)
    total = 2 * (pos.to(exact) @ ranks).long()
    # Row-major flat layout with a False column before each row, so runs never cross rows:
    # e[r, j] (j = 1..n-1) says element j-1 ties with element j of row r.
    e = torch.zeros(units, n + 1, dtype=torch.bool, device=s.device)
    torch.eq(s[:, 1:], s[:, :-1], out=e[:, 1:n])
    e = e.flatten()
    tied = (e[:-1] | e[1:]).nonzero().flatten()  # flat index r·(n+1) + j of tied elements
    if tied.numel() == 0:
        return total
    row, col = tied // (n + 1), tied % (n + 1)
    first = ~e[tied]  # starts a tie group
    group = first.cumsum(0) - 1
    lab = pos[row, col].long()
    k = torch.zeros(int(group[-1]) + 1, dtype=torch.long, device=s.device)
    k_pos = k.index_add(0, group, lab)
    sum_pos = k.index_add(0, group, lab * (col + 1))
    starts = first.nonzero().flatten()
    ends = torch.cat([starts[1:], starts.new_tensor([tied.numel()])]) - 1
    fix = k_pos * (col[starts] + col[ends] + 2) - 2 * sum_pos
    return total.index_add_(0, row[starts], fix)


def auroc(acts: Acts, labels: Labels) -> Float64[torch.Tensor, "d"]:
    """AUROC of every unit's activation as a score for ``labels == 1`` [AurA; METHODS §3].

    Exact Mann–Whitney U with average ranks for ties, i.e. ``P(x+ > x-) + ½ P(x+ = x-)``, equal
    to ``sklearn.metrics.roc_auc_score`` per column. Ranks are summed as exact integers
    (twice the average rank is always an integer), so the only rounding is the final division;
    the result is float64 because Det0/Damp rank units globally by AUROC and float32 would
    create ties that sklearn does not have. Raises ``ValueError`` on a single class, non-0/1
    labels, a row-count mismatch or NaN/inf activations.
    """
    x = _as_2d(acts, "acts")
    y = _as_labels(labels, x.shape[0], x.device)
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positive and {n_neg} negative "
                         "labels")
    out = torch.empty(x.shape[1], dtype=torch.float64, device=x.device)
    for cols in _chunks(*x.shape):
        s, idx = _sort_units(x[:, cols])
        u2 = _rank_sum2(s, y[idx]) - n_pos * (n_pos + 1)
        out[cols] = u2.double() / (2.0 * n_pos * n_neg)
    return out


def average_precision(acts: Acts, labels: Labels) -> Float64[torch.Tensor, "d"]:
    """Average precision per unit, as ``sklearn.metrics.average_precision_score`` [METHODS §3].

    ``AP = Σ_k (R_k − R_{k−1}) P_k`` over the distinct activation values taken as thresholds
    (step-wise, no interpolation; a group of tied values is one threshold, as in sklearn). Used
    to pick experts for the self-conditioning Det0 variant. Float64; needs at least one positive.
    """
    x = _as_2d(acts, "acts")
    y = _as_labels(labels, x.shape[0], x.device)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("average precision needs at least one positive label, got none")
    out = torch.empty(x.shape[1], dtype=torch.float64, device=x.device)
    for cols in _chunks(*x.shape):
        s, idx = torch.sort(x[:, cols].T.contiguous(), dim=1, descending=True)
        start, end = _tie_bounds(s)
        tp = y[idx].long().cumsum(1)
        # Only group ends are thresholds; the recall step there counts the group's positives.
        tp_before = torch.where(start > 0, tp.gather(1, (start - 1).clamp(min=0).long()), 0)
        is_end = end == torch.arange(s.shape[1], device=s.device)
        precision = tp.double() / torch.arange(1, s.shape[1] + 1, device=s.device)
        out[cols] = (is_end * (tp - tp_before) * precision).sum(1) / n_pos
    return out


# -- sorted-sample (1-D optimal transport) math ------------------------------------------------
def _interp_cols(s: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Columns of ``s`` (rows sorted along dim 1) at fractional indices ``pos``, linearly
    interpolated. An integer ``pos`` returns the column exactly (weight 0 on the neighbour),
    which is what makes equal-count quantile matching reduce to the plain sorted pairing.
    """
    lo = pos.floor().long().clamp(0, s.shape[1] - 1)
    hi = (lo + 1).clamp(max=s.shape[1] - 1)
    w = (pos - lo).to(s.dtype)
    return s[:, lo] * (1 - w) + s[:, hi] * w


def _sorted_units(x: torch.Tensor) -> torch.Tensor:
    """``x [n, c]`` as float64 ``[c, n]`` with each unit's samples sorted.

    Sorting a contiguous last dim is ~5× faster than along dim 0; sorting before the float64
    cast is exact (the cast is monotone) and cheaper.
    """
    return torch.sort(x.T.contiguous(), dim=1).values.double()


def _matched_sorted(x: torch.Tensor, k: int) -> torch.Tensor:
    """Hazen (type 5) quantiles ``[c, k]`` of each unit of ``x [n, c]`` at the k probabilities
    (i + ½)/k, i = 0..k−1. For n = k these are exactly the sorted samples; for n < k they
    linearly interpolate the sorted samples placed at plotting positions (j + ½)/n, constant
    beyond the first and last one.
    """
    s, n = _sorted_units(x), x.shape[0]
    if n == k:
        return s
    p = (torch.arange(k, device=x.device, dtype=torch.float64) + 0.5) / k
    return _interp_cols(s, (p * n - 0.5).clamp(0, n - 1))


def sorted_affine_fit(source: Acts, target: Real[torch.Tensor, "m d"] | Real[np.ndarray, "m d"]
                      ) -> tuple[Float64[torch.Tensor, "d"], Float64[torch.Tensor, "d"]]:
    """Linear-AcT's per-unit affine map ``T(a) = ω·a + β`` [AcT §3.1, Def. 3.1; METHODS §4.1].

    Least squares of the sorted target samples on the sorted source samples, column by column,
    in float64. Sorted pairing is the exact 1-D OT coupling, so ``ω ≥ 0`` always: a decreasing
    relation (target = a·source + b with a < 0) is not recovered, the fit returns the monotone
    map between the two marginals instead (ω = |a| when the source is symmetric).

    Unequal counts (n ≠ m, which the reference code forbids): both columns are replaced by their
    Hazen quantiles at the k = max(n, m) probabilities (i + ½)/k, so the larger sample is used
    as is and the smaller one is interpolated; n = m is exactly the sorted pairing.
    A constant source column (0/0 slope) gets ω = 1, β = mean(target) − mean(source), a pure
    shift (Mean-AcT), instead of the reference code's 1e-8 noise.
    """
    a, b = _as_2d(source, "source"), _as_2d(target, "target")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"source and target must have the same number of units, got "
                         f"{a.shape[1]} and {b.shape[1]}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError(f"sorted_affine_fit needs samples on both sides, got {a.shape[0]} "
                         f"source and {b.shape[0]} target rows")
    b = b.to(a.device)
    k = max(a.shape[0], b.shape[0])
    omega = torch.empty(a.shape[1], dtype=torch.float64, device=a.device)
    beta = torch.empty_like(omega)
    for cols in _chunks(k, a.shape[1]):
        sa, sb = _matched_sorted(a[:, cols], k), _matched_sorted(b[:, cols], k)
        ma, mb = sa.mean(1), sb.mean(1)
        ca = sa - ma[:, None]
        # Exact test on the sorted extremes: a mean-centred constant can be ±1 ulp, not 0.
        constant = sa[:, 0] == sa[:, -1]
        var = torch.where(constant, 1.0, (ca * ca).sum(1))
        w = torch.where(constant, 1.0, (ca * (sb - mb[:, None])).sum(1) / var)
        omega[cols], beta[cols] = w, mb - w * ma
    return omega, beta


def w2_sorted(u: Float[torch.Tensor, "n d"] | Float[np.ndarray, "n d"],
              v: Float[torch.Tensor, "n d"] | Float[np.ndarray, "n d"]) -> Float[torch.Tensor, "d"]:
    """Per-unit squared 1-D Wasserstein-2 distance ``mean_i (sort(u)_i − sort(v)_i)²`` [LinEAS;
    METHODS §5.2]; sum the result over units for the LinEAS layer loss Δ(U, V).

    Differentiable (autograd routes the gradient through the sort permutation). Equal sample
    counts are required, as in LinEAS's equal-size minibatches: quantile matching would silently
    change what the loss measures. Computed in the input dtype, raised to at least float32 so
    bf16/fp16 activations do not lose the loss; no NaN check (it would sync the GPU every step,
    and a NaN shows up in the loss anyway).
    """
    u, v = _as_2d(u, "u", check_finite=False), _as_2d(v, "v", check_finite=False)
    if u.shape != v.shape:
        raise ValueError(f"w2_sorted needs u and v of equal size (same samples and units), got "
                         f"{tuple(u.shape)} and {tuple(v.shape)}")
    if u.shape[0] == 0:
        raise ValueError("w2_sorted needs at least one sample, got 0 rows")
    dtype = torch.promote_types(torch.promote_types(u.dtype, v.dtype), torch.float32)
    su = torch.sort(u.to(dtype), dim=0).values
    sv = torch.sort(v.to(device=u.device, dtype=dtype), dim=0).values
    return (su - sv).pow(2).mean(0)


def quantiles(acts: Acts, qs) -> Float64[torch.Tensor, "q d"]:
    """Per-unit quantiles at probabilities ``qs`` (linear interpolation, same as
    ``torch.quantile(acts, qs, dim=0)`` but without its input-size limit) [METHODS §4.2].

    ``quantiles(a, [0, 1])`` is AcT's transport support ``[min, max]`` per unit. Float64.
    """
    x = _as_2d(acts, "acts")
    q = torch.as_tensor(qs, dtype=torch.float64, device=x.device).reshape(-1)
    if x.shape[0] == 0:
        raise ValueError("quantiles needs at least one sample, got 0 rows")
    if ((q < 0) | (q > 1) | q.isnan()).any():
        raise ValueError(f"quantile probabilities must be in [0, 1], got {q.tolist()}")
    out = torch.empty(q.shape[0], x.shape[1], dtype=torch.float64, device=x.device)
    for cols in _chunks(*x.shape):
        out[:, cols] = _interp_cols(_sorted_units(x[:, cols]), q * (x.shape[0] - 1)).T
    return out
