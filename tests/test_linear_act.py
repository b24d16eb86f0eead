"""Linear-AcT: exact affine recovery, transport support, λ, causal estimation, steering."""

import pytest
import torch

from steerinterp import collect
from steerinterp.metrics import sorted_affine_fit
from steerinterp.sites import Site, default_sites
from steerinterp.steer import SteerError, load_steerer, make, steered
from steerinterp.store import ActivationStore

SOURCE = [f"you are a terrible person number {i}, really awful" for i in range(10)]
TARGET = [f"the weather today is mild and the sky is clear {i}" for i in range(7)]
PROMPT = "the cat sat on"


def synthetic_pair(model, sites, n=24, seed=0):
    """Two stores with target = a·source + b per unit (a > 0), shaped like real ones."""
    store = collect(model, [f"text number {i}" for i in range(n)], sites, progress=False)
    g = torch.Generator().manual_seed(seed)
    a, b, src_acts = {}, {}, {}
    for site in sites:
        d = store[site].shape[1]
        src_acts[site] = torch.randn(n, d, generator=g, dtype=torch.float64)
        a[site] = torch.rand(d, generator=g, dtype=torch.float64) * 2 + 0.25
        b[site] = torch.randn(d, generator=g, dtype=torch.float64)
        store._acts[site] = src_acts[site].float()
    target = ActivationStore(dict(store.meta),
                             {s: (a[s] * src_acts[s] + b[s]).float() for s in sites},
                             store.lengths)
    return store, target, a, b


def test_recovers_exact_affine_map(tiny):
    sites = default_sites(tiny, "linear_act")[:2]
    src, tgt, a, b = synthetic_pair(tiny, sites)
    act = make("linear_act", sites=[str(s) for s in sites], causal=False, support=False)
    act.fit(tiny, src, tgt)
    for site in sites:
        torch.testing.assert_close(act.tensor(site, "omega").double(), a[site],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(act.tensor(site, "bias").double(), b[site],
                                   atol=1e-5, rtol=1e-5)
        assert act.tensor(site, "lo") is None
        torch.testing.assert_close(act.steer(src[site], site), tgt[site], atol=1e-5, rtol=1e-5)
    assert act.provenance.n_source == src.n


def test_support_leaves_outside_values_alone(tiny_gpt2):
    site = default_sites(tiny_gpt2, "linear_act")[0]
    src, tgt, a, b = synthetic_pair(tiny_gpt2, [site])
    act = make("linear_act", sites=[str(site)], causal=False).fit(tiny_gpt2, src, tgt)
    lo, hi = src[site].amin(0), src[site].amax(0)
    torch.testing.assert_close(act.tensor(site, "lo"), lo)
    torch.testing.assert_close(act.tensor(site, "hi"), hi)
    inside = (lo + hi) / 2
    probe = torch.stack([lo - 1.0, hi + 1.0, lo, hi, inside])
    out = act.steer(probe, site)
    torch.testing.assert_close(out[:4], probe[:4], rtol=0, atol=0)  # outside or on the edge
    expected = (a[site] * inside.double() + b[site]).float()
    torch.testing.assert_close(out[4], expected, atol=1e-5, rtol=1e-5)


def test_strength_interpolates(tiny_gpt2):
    site = default_sites(tiny_gpt2, "linear_act")[0]
    src, tgt, _, _ = synthetic_pair(tiny_gpt2, [site])
    act = make("linear_act", sites=[str(site)], causal=False, support=False)
    act.fit(tiny_gpt2, src, tgt)
    x = src[site]
    half = act.steer(x, site, 0.5)
    torch.testing.assert_close(half, (x + act.steer(x, site, 1.0)) / 2)
    torch.testing.assert_close(act.steer(x, site, 0.0), x, rtol=0, atol=0)


def test_causal_fit_uses_earlier_maps(tiny_gpt2):
    model = tiny_gpt2
    sites = default_sites(model, "linear_act")  # L0.ln1, L0.ln2, L1.ln1, L1.ln2
    layer0 = [s for s in sites if s.layer == 0]
    layer1 = [s for s in sites if s.layer == 1]
    causal = make("linear_act").fit(model, SOURCE, TARGET)
    simultaneous = make("linear_act", causal=False).fit(model, SOURCE, TARGET)
    assert causal.sites == sites
    # Layer 0 sees the unsteered model either way.
    for site in layer0:
        for name in ("omega", "bias", "lo", "hi"):
            torch.testing.assert_close(causal.tensor(site, name), simultaneous.tensor(site, name))
    # Layer 1 by hand: collect under the layer-0 maps only, then the sorted fit.
    first = make("linear_act", sites=[str(s) for s in layer0]).fit(model, SOURCE, TARGET)
    with steered(model, first, strength=1.0):
        src = collect(model, SOURCE, layer1, progress=False)
        tgt = collect(model, TARGET, layer1, progress=False)
    for site in layer1:
        omega, beta = sorted_affine_fit(src[site], tgt[site])
        torch.testing.assert_close(causal.tensor(site, "omega"), omega.float(),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(causal.tensor(site, "bias"), beta.float(),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(causal.tensor(site, "lo"), src[site].amin(0))
        assert not torch.allclose(causal.tensor(site, "omega"),
                                  simultaneous.tensor(site, "omega"), atol=1e-4)


def test_causal_fit_with_stores_is_refused(tiny_gpt2):
    sites = default_sites(tiny_gpt2, "linear_act")
    src = collect(tiny_gpt2, SOURCE, sites, progress=False)
    tgt = collect(tiny_gpt2, TARGET, sites, progress=False)
    with pytest.raises(SteerError, match="texts"):
        make("linear_act").fit(tiny_gpt2, src, tgt)
    with pytest.raises(SteerError, match="texts"):
        make("linear_act").fit(tiny_gpt2, SOURCE, tgt)
    assert make("linear_act", causal=False).fit(tiny_gpt2, src, tgt).fitted


def test_steered_strength_and_save_load(tiny, tmp_path):
    act = make("linear_act").fit(tiny, SOURCE, TARGET)
    with steered(tiny):
        base = tiny(PROMPT)
    with steered(tiny, act, strength=0.0):
        torch.testing.assert_close(tiny(PROMPT), base, rtol=0, atol=0)
    with steered(tiny, act):
        full = tiny(PROMPT)
    assert (full - base).abs().max() > 1e-3
    loaded = load_steerer(act.save(tmp_path / "act"), tiny)
    assert loaded.config == act.config
    with steered(tiny, loaded):
        torch.testing.assert_close(tiny(PROMPT), full, rtol=0, atol=0)
    with pytest.raises(SteerError, match="outside"):
        with steered(tiny, act, strength=1.5):
            pass
    with pytest.raises(SteerError, match="outside"):
        make("linear_act", strength=1.5)


def test_site_groups_follow_forward_order():
    from steerinterp.steer.linear_act import layer_groups

    sites = [Site(1, "ln2"), Site(0, "mlp_out"), Site(1, "ln1"), Site(0, "attn_out")]
    assert layer_groups(sites) == [[Site(0, "attn_out"), Site(0, "mlp_out")],
                                   [Site(1, "ln1"), Site(1, "ln2")]]
