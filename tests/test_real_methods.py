"""Every method on the real default model (gemma-3-270m), fitted on the default fit sets (32 + 32
``continuations`` texts: toxic vs non-toxic continuations of the same prompts, ``fitsets``):
does it move *held-out* source activations toward the target distribution at strength 1?

Held-out texts are the next 32 of the same shuffle (``toxicity_fit_sets(held_out=True)``).
Measure, per site: the quantile-matched squared 1-D W2 per unit (``metrics.w2_matched``),
divided by the unit's variance on the unsteered held-out target (so a few massive Gemma units
cannot dominate), averaged over units; then averaged over the method's sites. Collection runs
inside ``steered()``, so a steered site reads its steered value (upstream steering included).
Two targets:

* ``fixed`` — the unsteered target activations (what LinEAS trains toward);
* ``steered`` — target texts under the same steering: what a deployed model, which steers every
  input, does with non-toxic text, and what causal estimation (Linear-AcT, mean shift) fits
  toward, each layer fitted with the earlier maps active on source *and* target.

MEASURED holds the standardized W2 (unsteered → fixed / steered) and how many sites moved
closer, from ``python tests/test_real_methods.py`` (prints the same numbers; seed 0, this
2-core CPU). Known shortfalls are ``xfail(strict=True)``: a change that fixes one says so.
One shared model load; about 4 min on a 2-core CPU.
"""

import functools

import pytest
import torch

from steerinterp import collect, load_model, toxicity_fit_sets
from steerinterp.train import w2_matched
from steerinterp.sites import Site
from steerinterp.steer import make, steered

pytestmark = pytest.mark.slow

N_FIT = 32
CONFIG = {"det0": {"num_experts": 256}, "damp": {"num_experts": 256},
          "lineas": {"steps": 30}}
METHODS = ("aura", "det0", "damp", "mean_shift", "iti", "linear_act", "lineas")

# method: (unsteered, fixed, steered, sites closer to fixed, sites closer to steered, n sites);
# mean standardized W2² over sites, 32 held-out texts per side, λ = 1, seed 0, 2-core CPU.
MEASURED: dict[str, tuple] = {
    "aura": (0.2036, 0.3373, 0.1881, 0, 36, 36),
    "det0": (0.2036, 0.2430, 0.2027, 0, 28, 36),
    "damp": (0.2036, 0.2121, 0.2030, 0, 28, 36),
    "mean_shift": (0.2529, 0.5650, 0.2394, 1, 27, 36),
    "iti": (0.2893, 1.2835, 0.2900, 0, 3, 18),
    "linear_act": (0.2529, 0.3234, 0.2461, 5, 27, 36),
    "lineas": (0.2529, 0.2904, 0.2483, 11, 26, 36),
}

AURA_FIXED = ("dampening experts also dampens them on non-toxic text: the steered source "
              "lands below the unsteered target's max-pooled values (see MEASURED)")
CAUSAL_FIXED = ("each layer's map is fitted with the earlier maps active on source and target, "
                "so deep sites aim at the steered target; against the unsteered one they "
                "overshoot (see MEASURED and the diagnosis figure)")
LINEAS_STANDARDIZED = ("LinEAS minimises raw per-unit W2, which its held-out loss confirms "
                       "(test below); divided by the target's variance, low-variance units "
                       "move away (11 of 36 sites closer)")
ITI_MOVES_LITTLE = ("ITI shifts along one probe direction per layer: W2 over all units barely "
                    "moves toward the steered target (0.290 vs 0.289; 3 of 18 sites closer) "
                    "and moves away from the unsteered one")


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def data(model):
    fit = toxicity_fit_sets(model, n=N_FIT, seed=0, progress=False, log=lambda m: None)
    held = toxicity_fit_sets(model, n=N_FIT, seed=0, held_out=True, progress=False,
                             log=lambda m: None)
    assert not set(held[0]) & set(fit[0]) and not set(held[1]) & set(fit[1])
    return {"fit": fit, "held": held}


def standardized_w2(a, b, scale) -> torch.Tensor:
    """Per-unit W2² between ``a`` and ``b`` over the unit's variance in ``scale``."""
    return w2_matched(a.float(), b.float()) / (scale.float().var(0) + 1e-6)


@pytest.fixture(scope="module")
def results(model, data):
    """Per method (computed once): the steerer and per-site standardized W2 for each target."""
    @functools.cache
    def get(method: str) -> dict:
        steerer = make(method, **CONFIG.get(method, {})).fit(model, *data["fit"])
        opts = dict(sites=steerer.sites, pool=steerer.pool, progress=False)
        src0, tgt0 = (collect(model, t, **opts) for t in data["held"])
        with torch.no_grad(), steered(model, steerer, strength=1.0):
            src1, tgt1 = (collect(model, t, **opts) for t in data["held"])
        per_site = {s: {"unsteered": standardized_w2(src0[s], tgt0[s], tgt0[s]).mean().item(),
                        "fixed": standardized_w2(src1[s], tgt0[s], tgt0[s]).mean().item(),
                        "steered": standardized_w2(src1[s], tgt1[s], tgt0[s]).mean().item()}
                    for s in steerer.sites}
        mean = {k: sum(v[k] for v in per_site.values()) / len(per_site)
                for k in ("unsteered", "fixed", "steered")}
        closer = {k: sum(v[k] < v["unsteered"] for v in per_site.values())
                  for k in ("fixed", "steered")}
        return {"steerer": steerer, "per_site": per_site, **mean,
                "closer_fixed": closer["fixed"], "closer_steered": closer["steered"],
                "n_sites": len(per_site)}
    return get


def _xfail(method: str, reason: str):
    return pytest.param(method, marks=pytest.mark.xfail(strict=True, reason=reason))


@pytest.mark.parametrize("method", [
    "aura", "det0", "damp", "mean_shift", _xfail("iti", ITI_MOVES_LITTLE), "linear_act",
    "lineas"])
def test_steered_model_brings_heldout_source_closer_to_target(results, method):
    """The deployed comparison: steered toxic text vs steered non-toxic text."""
    r = results(method)
    assert r["steered"] < r["unsteered"], {k: r[k] for k in ("unsteered", "steered")}


@pytest.mark.parametrize("method", [
    _xfail("aura", AURA_FIXED), _xfail("det0", AURA_FIXED), _xfail("damp", AURA_FIXED),
    _xfail("mean_shift", CAUSAL_FIXED), _xfail("iti", ITI_MOVES_LITTLE),
    _xfail("linear_act", CAUSAL_FIXED), _xfail("lineas", LINEAS_STANDARDIZED)])
def test_moves_heldout_source_toward_unsteered_target(results, method):
    r = results(method)
    assert r["fixed"] < r["unsteered"], {k: r[k] for k in ("unsteered", "fixed")}


@pytest.mark.xfail(strict=True, reason=(
    "measured: after a 30-step fit on 32 + 32 texts several sites move away on held-out text "
    "(ratio up to 1.47, attn_out sites most) while others move closer: the joint loss trades "
    "sites against each other"))
def test_short_lineas_fit_reduces_heldout_w2_at_every_site(model, data, results):
    """Issue 12: a 30-step reference-recipe fit lowers the held-out loss (W2 to the untouched
    target) at every site, not only in the sum."""
    frame = results("lineas")["steerer"].heldout_w2(model, *data["held"])
    assert (frame["ratio"] < 1).all(), frame.loc[frame["ratio"] >= 1, ["site", "ratio"]]


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
    plain = model.generate(prompt, max_new_tokens=12, do_sample=False, verbose=False)
    with steered(model, aura):
        text = model.generate(prompt, max_new_tokens=12, do_sample=False, verbose=False)
    again = model.generate(prompt, max_new_tokens=12, do_sample=False, verbose=False)
    assert text.startswith(prompt) and text != plain  # the steering reached the decode loop
    assert again == plain  # and left with the block: no hook stays behind
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


if __name__ == "__main__":  # the MEASURED numbers: python tests/test_real_methods.py
    m = load_model()
    d = data.__wrapped__(m)
    get = results.__wrapped__(m, d)
    for name in METHODS:
        r = get(name)
        print(name, {k: round(r[k], 4) if isinstance(r[k], float) else r[k]
                     for k in ("unsteered", "fixed", "steered", "closer_fixed",
                               "closer_steered", "n_sites")}, flush=True)
