"""Closed-form checks of AurA / Det0 / Damp, ActAdd and ITI-c, plus their steering contract."""

import numpy as np
import pytest
import torch

from typecheck import checks_off
from steerinterp.sites import Site
from steerinterp.steer import SteerError, load_steerer, make, steered
from steerinterp.store import ActivationStore, build_meta
from steerinterp.tokens import token_ids

SOURCE = ["you are a horrible idiot", "shut up you fool", "what a stupid thing to say",
          "nobody likes you at all", "get lost, loser", "this is garbage and so are you"]
TARGET = ["the weather is mild today", "she read a book by the lake", "trains leave hourly",
          "water boils at one hundred", "the museum opens at nine", "we planted tomatoes"]
SITES = [Site(0, "mlp_out"), Site(1, "mlp_out")]  # width 32 each on the tiny models
ON = [str(s) for s in SITES]


def store(model, acts: dict, pool: str) -> ActivationStore:
    """An in-memory store holding ``acts`` (no forward pass), as collect() would build it."""
    sites = sorted(acts)
    n = len(next(iter(acts.values())))
    meta = build_meta(model, [f"text {i}" for i in range(n)], sites, pool, 128, True, 16)
    return ActivationStore(meta, {s: torch.as_tensor(a, dtype=torch.float32)
                                  for s, a in acts.items()})


def brute_auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(pos > neg) + ½ P(pos = neg) by counting all pairs."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def shifted_stores(model, shifts: torch.Tensor, n: int = 40):
    """Unit j: source = 0..n−1 + shifts[j], target = 0..n−1, so AUROC rises strictly with the
    shift (distinct shifts in (−n, n) give distinct AUROCs; AUROC > 0.5 iff shift > 0)."""
    base = torch.arange(n, dtype=torch.float32)[:, None]
    per_site = shifts.reshape(len(SITES), -1)
    src = {s: base + per_site[i] for i, s in enumerate(SITES)}
    tgt = {s: base.expand(n, per_site.shape[1]) for s in SITES}
    return store(model, src, "max"), store(model, tgt, "max")


# -- AurA ---------------------------------------------------------------------------------------
def test_aura_factors_match_hand_computation(tiny_gpt2):
    g = torch.Generator().manual_seed(0)
    src = {s: torch.randn(9, 32, generator=g) for s in SITES}
    tgt = {s: torch.randn(7, 32, generator=g) for s in SITES}
    site = SITES[0]
    src[site][:, 0], tgt[site][:, 0] = torch.arange(9) + 100.0, torch.arange(7) * 1.0  # perfect
    src[site][:, 1], tgt[site][:, 1] = -torch.arange(9) - 100.0, torch.arange(7) * 1.0  # reversed
    src[site][:, 2], tgt[site][:, 2] = 3.0, 3.0  # constant: chance
    src[site][:4, 3], tgt[site][:4, 3] = 1.0, 1.0  # ties between classes
    aura = make("aura", sites=ON).fit(tiny_gpt2, store(tiny_gpt2, src, "max"),
                            store(tiny_gpt2, tgt, "max"))
    for s in SITES:
        auc = torch.tensor([brute_auroc(src[s][:, j], tgt[s][:, j]) for j in range(32)])
        expected = torch.where(auc > 0.5, 2 * (1 - auc), torch.ones_like(auc))
        torch.testing.assert_close(aura.tensor(s, "auroc"), auc.float())
        torch.testing.assert_close(aura.tensor(s, "omega"), expected.float())
    omega = aura.tensor(site, "omega")
    assert omega[0] == 0 and omega[1] == 1 and omega[2] == 1
    assert aura.pool == "max"


@pytest.mark.parametrize("method,factor", [("det0", 0.0), ("damp", 0.5)])
@pytest.mark.parametrize("k", [1, 5, 40, 64])
def test_det0_damp_pick_global_top_k(tiny_gpt2, method, factor, k):
    shifts = torch.randperm(64, generator=torch.Generator().manual_seed(1)) - 32.0
    src, tgt = shifted_stores(tiny_gpt2, shifts)
    steerer = make(method, sites=ON, num_experts=k).fit(tiny_gpt2, src, tgt)
    omega = torch.cat([steerer.tensor(s, "omega") for s in SITES])
    expert = torch.cat([steerer.experts()[s] for s in SITES])
    top = torch.zeros(64, dtype=torch.bool)
    top[torch.argsort(shifts, descending=True)[:k]] = True
    assert torch.equal(expert, top) and int(expert.sum()) == k
    assert torch.all(omega[top] == factor) and torch.all(omega[~top] == 1)


def test_det0_default_selects_auroc_above_half(tiny_gpt2):
    shifts = torch.randperm(64, generator=torch.Generator().manual_seed(2)) - 32.0
    src, tgt = shifted_stores(tiny_gpt2, shifts)
    det0 = make("det0", sites=ON).fit(tiny_gpt2, src, tgt)
    expert = torch.cat([det0.experts()[s] for s in SITES])
    auc = torch.cat([det0.tensor(s, "auroc") for s in SITES])
    assert torch.equal(expert, shifts > 0) and torch.equal(expert, auc > 0.5)


def test_det0_ties_at_threshold_are_not_experts(tiny_gpt2):
    # Two units share the top AUROC: the 2nd largest is the threshold for k=1, so neither unit
    # is strictly above it (ml-aura's rule gives fewer than k experts, never more).
    shifts = torch.full((64,), -5.0)
    shifts[[3, 40]] = 10.0
    src, tgt = shifted_stores(tiny_gpt2, shifts)
    det0 = make("det0", sites=ON, num_experts=1).fit(tiny_gpt2, src, tgt)
    assert sum(int(m.sum()) for m in det0.experts().values()) == 0
    det0 = make("det0", sites=ON, num_experts=2).fit(tiny_gpt2, src, tgt)
    assert sum(int(m.sum()) for m in det0.experts().values()) == 2


def test_damp_alpha_and_expert_count_validation(tiny_gpt2):
    for bad in (0, -3, 2.5, True):
        with pytest.raises(SteerError, match="num_experts"), checks_off():  # 2.5: not an int
            make("det0", num_experts=bad)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(SteerError, match="damp_alpha"):
            make("damp", damp_alpha=bad)
    with pytest.raises(SteerError, match="unknown option"):
        make("det0", damp_alpha=0.5)  # det0 zeroes experts: no factor to set
    src, tgt = shifted_stores(tiny_gpt2, torch.arange(64.0) - 32)
    with pytest.raises(SteerError, match="only 64 units"):
        make("damp", sites=ON, num_experts=65).fit(tiny_gpt2, src, tgt)


# -- ActAdd -------------------------------------------------------------------------------------
def test_actadd_is_mean_pairwise_last_token_difference(tiny):
    actadd = make("actadd").fit(tiny, SOURCE[:4], TARGET[:4])
    (site,) = actadd.sites
    assert site == Site(tiny.cfg.n_layers // 2, "resid_pre") and actadd.pool == "last"

    def last(text):
        ids = torch.tensor(token_ids(tiny, [text], 128))
        _, cache = tiny.run_with_cache(ids, names_filter=site.hook_name)
        return cache[site.hook_name][0, -1].double()

    expected = torch.stack([last(t) - last(s) for s, t in zip(SOURCE[:4], TARGET[:4])]).mean(0)
    torch.testing.assert_close(actadd.tensor(site, "bias"), expected.float(), atol=1e-5, rtol=1e-5)


def test_actadd_needs_pairs(tiny_gpt2):
    with pytest.raises(SteerError, match="pairs"):
        make("actadd").fit(tiny_gpt2, SOURCE[:3], TARGET[:2])
    with pytest.raises(SteerError, match="single string"):
        make("actadd").fit(tiny_gpt2, "one prompt", "another")


# -- ITI-c --------------------------------------------------------------------------------------
def iti_data(tiny_gpt2, n=30, d=32, gap=4.0):
    g = torch.Generator().manual_seed(3)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    site = Site(0, "attn_out")
    src = torch.randn(n, d, generator=g) + gap * u + 1.0  # an offset the probe must ignore
    tgt = torch.randn(n + 5, d, generator=g) - gap * u + 1.0
    return site, u, src, tgt, store(tiny_gpt2, {site: src}, "mean"), \
        store(tiny_gpt2, {site: tgt}, "mean")


def test_iti_direction_separates_and_points_to_target(tiny_gpt2):
    site, u, src, tgt, s_store, t_store = iti_data(tiny_gpt2)
    iti = make("iti", sites=[str(site)]).fit(tiny_gpt2, s_store, t_store)
    theta = iti.tensor(site, "direction")
    assert torch.isclose(theta.norm(), torch.tensor(1.0))
    assert (tgt @ theta).min() > (src @ theta).max()
    assert float(theta @ -u) > 0.8  # close to the true source→target direction
    sigma = torch.cat([src, tgt]).double() @ theta.double()
    torch.testing.assert_close(iti.tensor(site, "bias"), theta * float(sigma.std(unbiased=False)))
    stats = iti.probe_stats[str(site)]
    assert stats["train_accuracy"] == 1.0 and stats["heldout_accuracy"] >= 0.9


def test_iti_unit_scale_and_options(tiny_gpt2):
    site, _, _, _, s_store, t_store = iti_data(tiny_gpt2)
    iti = make("iti", sites=[str(site)], scale="unit", val_fraction=0).fit(tiny_gpt2, s_store,
                                                                             t_store)
    torch.testing.assert_close(iti.tensor(site, "bias"), iti.tensor(site, "direction"))
    assert torch.isclose(iti.tensor(site, "bias").norm(), torch.tensor(1.0))
    assert iti.probe_stats[str(site)]["heldout_accuracy"] is None
    with pytest.raises(SteerError, match="scale"):
        make("iti", scale="huge")
    with pytest.raises(SteerError, match="C must be"):
        make("iti", C=0)
    with pytest.raises(SteerError, match="identical statistics"):
        same = store(tiny_gpt2, {site: torch.ones(4, 32)}, "mean")
        make("iti", sites=[str(site)]).fit(tiny_gpt2, same, same)


# -- steering contract --------------------------------------------------------------------------
FITS = {"aura": {}, "det0": {"num_experts": 20}, "damp": {}, "actadd": {}, "iti": {}}


@pytest.mark.parametrize("method", list(FITS))
def test_steering_changes_logits_identity_at_zero_and_roundtrip(tiny, method, tmp_path):
    steerer = make(method, **FITS[method]).fit(tiny, SOURCE, TARGET)
    tokens = torch.tensor(token_ids(tiny, ["the quick brown fox"], 128))
    plain = tiny(tokens)
    with steered(tiny, steerer, strength=0.0):
        assert torch.equal(tiny(tokens), plain)
    with steered(tiny, steerer):
        full = tiny(tokens)
    assert not torch.allclose(full, plain, atol=1e-4)
    loaded = load_steerer(steerer.save(tmp_path / method), tiny)
    with steered(tiny, loaded):
        assert torch.equal(tiny(tokens), full)
    if method == "iti":
        assert loaded.probe_stats == steerer.probe_stats


def test_strength_ranges_and_unknown_options(tiny_gpt2):
    with pytest.raises(SteerError, match="outside aura's range"):
        make("aura", strength=1.5)
    with pytest.raises(SteerError, match="unknown option"):
        make("aura", num_experts=3)
    with pytest.raises(SteerError, match="unknown option"):
        make("iti", alpha=2.0)
    aura = make("aura").fit(tiny_gpt2, SOURCE, TARGET)
    with pytest.raises(SteerError, match="outside"):
        with steered(tiny_gpt2, aura, strength=-0.5):
            pass
    actadd = make("actadd", strength=-4.0).fit(tiny_gpt2, SOURCE, TARGET)  # unbounded
    with steered(tiny_gpt2, actadd, strength=12.0):
        assert np.isfinite(tiny_gpt2("hello").detach().numpy()).all()
