"""fold_into_weights: folded logits equal hooked logits; unfoldable cases fail naming the site."""

import copy

import pytest
import torch

from typecheck import checks_off
from steerinterp.sites import POINTS, Site, points_of
from steerinterp.steer import SteerError, Steerer, fold_into_weights, make, steered

SRC = ["the cat sat on the mat", "hello there, my friend", "short one"]
TGT = ["activation steering edits what a model computes", "yet another sentence", "a b c"]
BATCH = ["the quick brown fox", "steering folds into weights", "ok"]

# Points where a full scale + shift folds; elsewhere on the model only a scale folds (the
# hook is followed by a bias-free gain or projection). resid_* never folds.
FULL = {"gpt2": {"ln1", "attn_z", "attn_out", "ln2", "mlp_pre", "mlp_post", "mlp_out"},
        "gemma": {"attn_z", "mlp_post"}}
FOLDABLE = [p for p in POINTS if not p.startswith("resid_")]


@pytest.fixture(scope="module")
def model(tiny):
    """A copy of the tiny model with random norm gains and biases, so that a fold that mixes
    up ``w``/``b`` (all ones / zeros at init) cannot pass by accident."""
    m = copy.deepcopy(tiny)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 1 or name.split(".")[-1].startswith("b"):
                base = 1.0 if name.endswith(".w") else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen))
    return m


def _arch(model) -> str:
    return "gemma" if model.cfg.use_normalization_before_and_after else "gpt2"


def _steerer(model, point, scale=True, shift=True, seed=0, **config):
    """A mean-shift steerer at ``point`` in both layers, with random (ω, b) when asked."""
    sites = [Site(layer, point) for layer in range(model.cfg.n_layers)]
    s = make("mean_shift", sites=[str(x) for x in sites], **config)
    s.fit(model, source=SRC, target=TGT)
    gen = torch.Generator().manual_seed(seed)
    for site in sites:
        width = site.width(model)
        if scale:
            s.set_tensor(site, "omega", torch.rand(width, generator=gen) + 0.5)
        bias = torch.randn(width, generator=gen) if shift else torch.zeros(width)
        s.set_tensor(site, "bias", bias)
    return s


def _tokens(model):
    return model.to_tokens(BATCH)


def _hooked(model, *steerers, strength=None):
    with torch.no_grad(), steered(model, *steerers, strength=strength):
        return model(_tokens(model))


def _folded(model, *steerers, strength=None):
    with torch.no_grad():
        return fold_into_weights(model, *steerers, strength=strength)(_tokens(model))


@pytest.mark.parametrize("strength", [1.0, 0.5])
@pytest.mark.parametrize("point", FOLDABLE)
def test_fold_matches_hooks(model, point, strength):
    if point not in points_of(model):
        pytest.skip(f"{point} does not exist on {model.cfg.model_name}")
    s = _steerer(model, point, shift=point in FULL[_arch(model)])
    expected = _hooked(model, s, strength=strength)
    with torch.no_grad():
        plain = model(_tokens(model))
    assert not torch.allclose(expected, plain, atol=1e-3), "the steerer must change the logits"
    torch.testing.assert_close(_folded(model, s, strength=strength), expected,
                               atol=1e-4, rtol=1e-4)


def test_original_untouched_and_info_kept(model):
    s = _steerer(model, "mlp_post")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_into_weights(model, s)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed in the original model"
    assert folded is not model
    assert folded.steerinterp_info == model.steerinterp_info
    assert folded.steerinterp_folded == [
        {"method": "mean_shift", "sites": [str(x) for x in s.sites], "strength": 1.0}]
    s.check_model(folded)  # still matches stores and steerers fitted on the original
    assert not any(hp.has_hooks("fwd") for hp in folded.hook_dict.values())


@pytest.mark.parametrize("points", [("mlp_post", "mlp_post"), ("attn_z", "attn_z"),
                                    ("ln2", "mlp_post"), ("mlp_pre", "mlp_pre")])
def test_two_steerers_compose_in_order(model, points):
    """Shared sites compose in argument order, also where the fold lands in the following
    layer (mlp_post, attn_z), where folding one after the other would reverse the order."""
    full = FULL[_arch(model)]
    a = _steerer(model, points[0], shift=points[0] in full, seed=1)
    b = _steerer(model, points[1], shift=points[1] in full, seed=2)
    for strength in (None, 0.5):
        torch.testing.assert_close(_folded(model, a, b, strength=strength),
                                   _hooked(model, a, b, strength=strength),
                                   atol=1e-4, rtol=1e-4)


def test_shift_only_steerer_folds(tiny_gpt2):
    """Plain mean shift (no ω at all), as fitted."""
    s = make("mean_shift", sites=["L0.ln2", "L1.mlp_out"]).fit(tiny_gpt2, source=SRC, target=TGT)
    torch.testing.assert_close(_folded(tiny_gpt2, s), _hooked(tiny_gpt2, s), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("point", ["resid_pre", "resid_mid", "resid_post"])
def test_residual_is_refused(tiny, point):
    s = _steerer(tiny, point)
    with pytest.raises(SteerError, match=rf"L0\.{point}.*residual stream.*steered\(\)"):
        fold_into_weights(tiny, s)


def test_support_is_refused(tiny):
    s = make("mean_shift", sites=["L1.mlp_post"], support=True).fit(tiny, source=SRC, target=TGT)
    with pytest.raises(SteerError, match=r"L1\.mlp_post.*transport support"):
        fold_into_weights(tiny, s)


@pytest.mark.parametrize("point", ["ln1", "ln2", "attn_out", "mlp_out", "mlp_pre",
                                   "mlp_pre_linear"])
def test_shift_at_bias_free_gemma_sites_is_refused(tiny_gemma, point):
    s = _steerer(tiny_gemma, point)
    with pytest.raises(SteerError, match=rf"L0\.{point}: a nonzero shift cannot be folded"):
        fold_into_weights(tiny_gemma, s)


def test_non_affine_and_unfitted_are_refused(tiny_gpt2):
    class Gate(Steerer):
        method = "gate"

    with pytest.raises(SteerError, match="AffineSteerer.*Gate"), checks_off():
        fold_into_weights(tiny_gpt2, Gate())
    with pytest.raises(SteerError, match="not fitted"):
        fold_into_weights(tiny_gpt2, make("mean_shift", sites=["L0.mlp_post"]))
    s = _steerer(tiny_gpt2, "mlp_post")
    with pytest.raises(SteerError, match="outside"):
        fold_into_weights(tiny_gpt2, s, strength=2.0)


def test_steer_override_that_is_not_affine_is_refused(tiny_gpt2):
    from steerinterp.steer.mean_shift import MeanShift

    class Clamped(MeanShift):  # affine() still reports (ω, b), but steer() clamps
        def steer(self, acts, site, strength=None):
            return super().steer(acts, site, strength).clamp(-0.1, 0.1)

    s = Clamped(MeanShift.Config(sites=("L0.mlp_post",))).fit(tiny_gpt2, source=SRC, target=TGT)
    with pytest.raises(SteerError, match=r"L0\.mlp_post.*not the per-unit affine map"):
        fold_into_weights(tiny_gpt2, s)


def test_refuses_while_hooks_are_attached(tiny_gpt2):
    s = _steerer(tiny_gpt2, "mlp_post")
    with steered(tiny_gpt2, s), pytest.raises(SteerError, match="hooks attached"):
        fold_into_weights(tiny_gpt2, s)


def test_other_model_is_refused(tiny_gpt2, tiny_gemma):
    s = _steerer(tiny_gpt2, "mlp_post")
    with pytest.raises(SteerError, match="fitted on"):
        fold_into_weights(tiny_gemma, s)
