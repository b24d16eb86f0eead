"""Every method on the real default model (gemma-3-270m): fitted on 32 + 32 built-in sentences,
does it move *held-out* pooled source activations toward the target distribution at strength 1?

Measure: the per-unit squared 1-D Wasserstein-2 distance (``metrics.w2_sorted``) between
held-out toxic and held-out Wikipedia activations, pooled as the method pools, summed over all
units of the method's sites. Collection runs inside ``steered()``, so the value read at a steered
site is the steered one (upstream sites' steering included). Two targets are compared:

* ``fixed`` — the unsteered Wikipedia activations (the distribution the source should reach);
* ``steered`` — Wikipedia activations under the same steering, i.e. what the steered model does
  with target text. This is what Linear-AcT's causal estimation fits toward (each layer's map is
  fitted with the earlier maps active on source *and* target, as in the AcT reference) and the
  relevant comparison for a deployed model, which steers every input.

Measured on this data (steered / unsteered W2, summed over sites; held-out):

============  =======  =========  ==========================================================
method        fixed    steered    note
============  =======  =========  ==========================================================
aura          0.90     0.64       dampening brings the max-pooled toxic values down
det0 (256)    0.95     0.93
damp (256)    0.96     0.96
mean_shift    2.99     2.30       layer 0 alone: 0.50; shifts fitted on unsteered activations
                                  compound through 18 layers (non-causal), deep layers overshoot
iti           1.09     0.96       same compounding, one σθ per layer
linear_act    3.05     0.96       causal maps chase the *steered* target; a few massive Gemma
                                  units in L17.mlp_out (|z| ~ 5e3) dominate the fixed sum
============  =======  =========  ==========================================================

Known shortfalls are ``xfail(strict=True)``: if a change makes them pass, the test says so.
One shared model load; about 100 s on a 2-core CPU (linear_act's causal fit is ~27 s of it).
"""

import functools

import pytest
import torch

from steerinterp import collect, length_match, load_model, load_texts
from steerinterp.metrics import w2_sorted
from steerinterp.sites import Site, default_sites
from steerinterp.steer import make, steered

pytestmark = pytest.mark.slow

N_FIT = 32
N_HELD = 32
# mean_shift fits causally by default now; these checks and their xfails were measured on the
# simultaneous (non-causal) fit, which is what COMPOUNDING describes.
CONFIG = {"det0": {"num_experts": 256}, "damp": {"num_experts": 256},
          "mean_shift": {"causal": False}}
COMPOUNDING = ("non-causal per-layer shifts compound over 18 layers: deeper sites overshoot "
               "the unsteered target (layer 0 alone halves W2; see module docstring)")
ITI_COMPOUNDING = ("one σθ shift per layer, each probed on unsteered activations, compounds over "
                   "18 layers: only 6 of 18 sites move toward the unsteered target")


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def data(model):
    """Fit pairs = the first N_FIT of each set; held-out = the next N_HELD of the same shuffle
    (``load_texts`` with one seed extends a shorter draw, so the two never share an index)."""
    toxic = load_texts("toxic", n=N_FIT + N_HELD, seed=0)
    wiki = load_texts("wiki_target", n=N_FIT + N_HELD, seed=0)
    fit = length_match(model, toxic[:N_FIT], wiki[:N_FIT])
    held = length_match(model, toxic[N_FIT:], wiki[N_FIT:])
    assert not set(held[0]) & set(fit[0]) and not set(held[1]) & set(fit[1])
    assert len(held[0]) == len(held[1]) == N_HELD  # w2_sorted needs equal counts
    return {"fit": fit, "held": held}


@pytest.fixture(scope="module")
def unsteered(model, data):
    """Held-out (source, target) stores without steering, one collection per pooling over the
    union of the sites that pooling's methods steer (shared by all methods)."""
    @functools.cache
    def get(pool: str):
        sites = sorted({s for m in ("aura", "mean_shift", "iti", "linear_act")
                        for s in default_sites(model, m) if make(m).pool == pool})
        return tuple(collect(model, texts, sites, pool=pool, progress=False)
                     for texts in data["held"])
    return get


@pytest.fixture(scope="module")
def results(model, data, unsteered):
    """Per method (computed once): fitted steerer and summed W2 for the three comparisons."""
    @functools.cache
    def get(method: str) -> dict:
        steerer = make(method, **CONFIG.get(method, {})).fit(model, source=data["fit"][0],
                                                             target=data["fit"][1])
        src0, tgt0 = unsteered(steerer.pool)
        with steered(model, steerer, strength=1.0):
            src1, tgt1 = (collect(model, texts, steerer.sites, pool=steerer.pool,
                                  progress=False) for texts in data["held"])

        def w2(a, b, sites=steerer.sites) -> float:
            return sum(float(w2_sorted(a[s], b[s]).sum()) for s in sites)

        first = [s for s in steerer.sites if s.layer == steerer.sites[0].layer]
        return {"steerer": steerer, "unsteered": w2(src0, tgt0), "fixed": w2(src1, tgt0),
                "steered": w2(src1, tgt1), "first_unsteered": w2(src0, tgt0, first),
                "first_fixed": w2(src1, tgt0, first)}
    return get


def _xfail(method: str, reason: str):
    return pytest.param(method, marks=pytest.mark.xfail(strict=True, reason=reason))


@pytest.mark.parametrize("method", [
    "aura", "det0", "damp",  # dampening only, yet the toxic max-pooled values come down
    _xfail("mean_shift", COMPOUNDING), _xfail("iti", ITI_COMPOUNDING),
    _xfail("linear_act", "causal maps target the steered target distribution; massive "
                         "L17.mlp_out units dominate the sum against the unsteered one"),
])
def test_moves_heldout_source_toward_unsteered_target(results, method):
    r = results(method)
    assert r["fixed"] < r["unsteered"], r


@pytest.mark.parametrize("method", [
    "aura", "det0", "damp", "iti", "linear_act", _xfail("mean_shift", COMPOUNDING)])
def test_steered_model_brings_heldout_source_closer_to_target(results, method):
    r = results(method)
    assert r["steered"] < r["unsteered"], r


@pytest.mark.parametrize("method", ["mean_shift", "linear_act"])
def test_first_layer_maps_generalize(results, method):
    """Where nothing upstream is steered, the transport/shift maps fitted on 32 sentences move
    held-out source activations toward the target (mean shift: about halves W2)."""
    r = results(method)
    assert r["first_fixed"] < 0.95 * r["first_unsteered"], r


def test_actadd_fits_one_pair_and_steers(model):
    """ActAdd from one contrast pair: at strength 1 the source prompt's last-token residual at
    the steered site becomes exactly the target prompt's (β is their difference)."""
    pair = (["You are a disgusting idiot"], ["You are a wonderful friend"])
    actadd = make("actadd").fit(model, source=pair[0], target=pair[1])
    site = actadd.sites[0]
    assert site == Site(model.cfg.n_layers // 2, "resid_pre")
    assert float(actadd.tensor(site, "bias").norm()) > 0
    target = collect(model, pair[1], [site], pool="last", progress=False)[site]
    tokens = model.to_tokens(pair[0])
    with torch.no_grad(), steered(model, actadd, strength=1.0):
        moved = collect(model, pair[0], [site], pool="last", progress=False)[site]
        logits = model(tokens)
    torch.testing.assert_close(moved, target, atol=1e-2, rtol=1e-4)
    with torch.no_grad():
        assert (logits - model(tokens)).abs().max() > 1e-2


def test_generate_under_steered(model, results):
    aura = results("aura")["steerer"]
    prompt = "You are such a"
    with steered(model, aura):
        text = model.generate(prompt, max_new_tokens=12, do_sample=False, verbose=False)
    assert isinstance(text, str) and text.startswith(prompt) and len(text) > len(prompt) + 3
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())
