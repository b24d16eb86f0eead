"""Mean shift / Mean-AcT: causal (layer-by-layer, AcT §3.2) and simultaneous estimation."""

import pytest
import torch

from steerinterp import collect
from steerinterp.sites import default_sites
from steerinterp.steer import SteerError, load_steerer, make, steered

SOURCE = [f"you are a terrible person number {i}, really awful" for i in range(8)]
TARGET = [f"the weather today is mild and the sky is clear {i}" for i in range(6)]


def _spec(sites):
    return [str(s) for s in sites]


def _mean_diff(model, sites):
    """Per-site ``mean(target) − mean(source)`` on the model as it is hooked right now."""
    src = collect(model, SOURCE, sites, progress=False)
    tgt = collect(model, TARGET, sites, progress=False)
    return {s: (tgt[s].double().mean(0) - src[s].double().mean(0)).float() for s in sites}, src


def test_one_layer_causal_equals_simultaneous(tiny):
    layer0 = [s for s in default_sites(tiny, "mean_shift") if s.layer == 0]
    assert len(layer0) == 2  # two sites of one layer are fitted together
    causal = make("mean_shift", sites=_spec(layer0), support=True).fit(tiny, SOURCE, TARGET)
    plain = make("mean_shift", sites=_spec(layer0), support=True, causal=False)
    plain.fit(tiny, SOURCE, TARGET)
    assert causal.sites == plain.sites == layer0
    for key, value in plain.tensors.items():
        assert torch.equal(causal.tensors[key], value), key


def test_later_layer_is_fitted_under_earlier_shifts(tiny):
    sites = default_sites(tiny, "mean_shift")
    layer0 = [s for s in sites if s.layer == 0]
    layer1 = [s for s in sites if s.layer == 1]
    causal = make("mean_shift", support=True).fit(tiny, SOURCE, TARGET)
    plain = make("mean_shift", support=True, causal=False).fit(tiny, SOURCE, TARGET)
    assert causal.sites == sites and layer1
    unsteered, _ = _mean_diff(tiny, layer0)
    for site in layer0:  # layer 0 sees the unsteered model either way
        torch.testing.assert_close(causal.tensor(site, "bias"), unsteered[site],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(causal.tensor(site, "bias"), plain.tensor(site, "bias"))
    # Layer 1 by hand: the mean difference collected with the layer-0 shifts active (λ = 1).
    first = make("mean_shift", sites=_spec(layer0), support=True).fit(tiny, SOURCE, TARGET)
    with steered(tiny, first, strength=1.0):
        expected, src = _mean_diff(tiny, layer1)
    for site in layer1:
        torch.testing.assert_close(causal.tensor(site, "bias"), expected[site],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(causal.tensor(site, "lo"), src[site].amin(0))
        torch.testing.assert_close(causal.tensor(site, "hi"), src[site].amax(0))
        assert not torch.allclose(causal.tensor(site, "bias"), plain.tensor(site, "bias"),
                                  atol=1e-4)


def test_stores_need_causal_false(tiny_gpt2):
    sites = default_sites(tiny_gpt2, "mean_shift")
    src = collect(tiny_gpt2, SOURCE, sites, progress=False)
    tgt = collect(tiny_gpt2, TARGET, sites, progress=False)
    for source, target in [(src, tgt), (SOURCE, tgt), (src, TARGET)]:
        with pytest.raises(SteerError, match="mean_shift causal estimation needs texts, not an "
                                             "ActivationStore .*causal=False"):
            make("mean_shift").fit(tiny_gpt2, source, target)
    from_stores = make("mean_shift", causal=False).fit(tiny_gpt2, src, tgt)
    from_texts = make("mean_shift", causal=False).fit(tiny_gpt2, SOURCE, TARGET)
    for key, value in from_texts.tensors.items():
        torch.testing.assert_close(from_stores.tensors[key], value)


@pytest.mark.parametrize("causal", [True, False])
def test_save_load_keeps_causal(tiny_gpt2, tmp_path, causal):
    fitted = make("mean_shift", causal=causal).fit(tiny_gpt2, SOURCE, TARGET)
    loaded = load_steerer(fitted.save(tmp_path / "ms"), tiny_gpt2)
    assert loaded.config.causal is causal and loaded.config == fitted.config
    assert loaded.sites == fitted.sites
    for key, value in fitted.tensors.items():
        assert torch.equal(loaded.tensors[key], value), key


def test_unsteered_target_lands_each_layer_on_the_untouched_target(tiny):
    """``causal_target="unsteered"``: with one site per layer, the steered source's mean at
    every site equals the unsteered model's target mean (the reference's default, a steered
    target, does not: its target drifts with the earlier shifts)."""
    sites = default_sites(tiny, "mean_shift")
    sites = [s for s in sites if s.point == sites[-1].point]  # the last point of each layer
    assert len({s.layer for s in sites}) == len(sites) > 1
    target = collect(tiny, TARGET, sites, progress=False)
    gaps = {}
    for mode in ("unsteered", "steered"):
        shift = make("mean_shift", sites=_spec(sites), causal_target=mode)
        shift.fit(tiny, SOURCE, TARGET)
        with steered(tiny, shift, strength=1.0):
            src = collect(tiny, SOURCE, sites, progress=False)
        gaps[mode] = [float((src[s].double().mean(0) - target[s].double().mean(0)).abs().max())
                      for s in sites]
    assert max(gaps["unsteered"]) < 1e-4
    assert max(gaps["steered"][1:]) > 1e-3  # layer 0 is the same either way


def test_unknown_causal_target_is_refused():
    with pytest.raises(SteerError, match="causal_target must be one of steered, unsteered"):
        make("linear_act", causal_target="both")
