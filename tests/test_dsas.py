"""DSAS (steer/dsas.py): the gate's algebra, composition with every base, read-outs, save/load,
bad input, and E2E-DSAS training on tiny models."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from steerinterp.collection import collect
from steerinterp.models import tiny_model
from steerinterp.sites import Site
from steerinterp.steer import SteerError, load_steerer, make, steered
from steerinterp.analysis.token_scales import TOKEN_COLUMNS, token_scales
from steerinterp.steer.probe import fit_gate
from steerinterp.store import ActivationStore, build_meta

SOURCE = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig",
          "I hate you so much", "go away, loser", "this is garbage, moron"]
TARGET = ["the river flows to the sea", "a library holds many books", "the train leaves at noon",
          "plants need light to grow", "the museum opens on monday", "rain fell on the hills"]
CONTROL = ["the meeting starts at ten", "he painted the fence blue", "cats sleep a lot",
           "the bus was late again", "she plays the violin", "bread is baked daily"]
PROMPT = ["the weather today is", "you are such an idiot"]
BASES = {"aura": {}, "mean_shift": {}, "iti": {}, "linear_act": {}, "actadd": {},
         "lineas": {"steps": 3, "lr": 0.01, "minibatch": 6}}
SITES = [Site(0, "mlp_out"), Site(1, "mlp_out")]


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2", seed=1)


@pytest.fixture(scope="module")
def bases(model):
    return {name: make(name, **cfg).fit(model, source=SOURCE, target=TARGET)
            for name, cfg in BASES.items()}


def _logits(model, *steerers, **kw):
    with torch.no_grad(), steered(model, *steerers, **kw):
        return model(model.to_tokens(PROMPT))


def _force(dsas, active: bool, c: float = 100.0):
    """Gate pinned at 1 (u = 0, c = +100 → σ = 1 in float32) or switched off."""
    for site in dsas.sites:
        dsas.probe[str(site)]["active"] = active
        dsas.tensor(site, "u").data.zero_()
        dsas.tensor(site, "c").data.fill_(c)
    return dsas


def _store(model, acts: dict) -> ActivationStore:
    n = len(next(iter(acts.values())))
    meta = build_meta(model, [f"text {i}" for i in range(n)], sorted(acts), "mean", 128, True, 16)
    return ActivationStore(meta, {s: torch.as_tensor(a, dtype=torch.float32)
                                  for s, a in acts.items()})


# -- the probe -------------------------------------------------------------------------------
def test_fit_gate_folds_pca_and_probe_into_one_dot_product():
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(30, 16, generator=gen) + 1.0
    ctl = torch.randn(30, 16, generator=gen)
    u, c, stats = fit_gate(src, ctl, n_components=5, C=0.5, seed=0)
    x = torch.cat([src, ctl]).double().numpy()
    y = np.r_[np.ones(30), np.zeros(30)]
    pipe = make_pipeline(PCA(5, random_state=0), StandardScaler(),
                         LogisticRegression(C=0.5, max_iter=5000, random_state=0)).fit(x, y)
    np.testing.assert_allclose(x @ u.numpy() + c, pipe.decision_function(x), atol=1e-6)
    assert stats["n_components"] == 5 and stats["accuracy"] >= 0.75


def test_fit_gate_caps_components_and_scores_noise_low():
    gen = torch.Generator().manual_seed(1)
    u, _, stats = fit_gate(torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen),
                           n_components=50)
    assert u.shape == (8,) and stats["n_components"] == 5  # n − 1
    _, _, noise = fit_gate(torch.randn(40, 8, generator=gen), torch.randn(40, 8, generator=gen))
    assert noise["accuracy"] < 0.75


# -- composition and the gate's two limits ---------------------------------------------------
@pytest.mark.parametrize("name", sorted(BASES))
def test_gate_one_equals_base_and_gate_zero_is_identity(model, bases, name):
    dsas = make("dsas", base=bases[name], threshold=0.0).fit(model, SOURCE, control=CONTROL)
    assert dsas.sites == bases[name].sites
    rng = bases[name].strength_range  # bounded bases: stretched by the gate headroom
    assert dsas.strength_range == (None if rng is None else (rng[0], rng[1] * dsas.HEADROOM))
    assert (_logits(model, dsas) - _logits(model)).abs().max() > 1e-4
    torch.testing.assert_close(_logits(model, _force(dsas, True)), _logits(model, bases[name]),
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(_logits(model, _force(dsas, False)), _logits(model))


def test_steer_scales_the_base_update_per_token(model, bases):
    dsas = make("dsas", base=bases["actadd"], strength=3.0).fit(model, SOURCE, control=CONTROL)
    site = dsas.sites[0]
    acts = torch.randn(2, 5, site.width(model))
    s = dsas.gate(acts, site).unsqueeze(-1)
    expected = acts + 3.0 * s * (bases["actadd"].steer(acts, site, 1.0) - acts)
    torch.testing.assert_close(dsas.steer(acts, site), expected)
    assert torch.equal(dsas.steer(acts, site, 0.0), acts)


def test_useless_probe_gets_gate_zero(model):
    gen = torch.Generator().manual_seed(0)
    src = {SITES[0]: torch.randn(40, 32, generator=gen) + 2.0,
           SITES[1]: torch.randn(40, 32, generator=gen)}
    ctl = {SITES[0]: torch.randn(40, 32, generator=gen),
           SITES[1]: torch.randn(40, 32, generator=gen)}
    src, ctl = _store(model, src), _store(model, ctl)
    base = make("mean_shift", sites=[str(s) for s in SITES], causal=False)  # stores: simultaneous
    base.fit(model, src, ctl)
    dsas = make("dsas", base=base).fit(model, src, control=ctl)
    report = dsas.probe_report().set_index("site")
    assert report.loc["L0.mlp_out", "active"] and not report.loc["L1.mlp_out", "active"]
    assert report.loc["L1.mlp_out", "accuracy"] < 0.75
    acts = torch.randn(4, 32)
    assert torch.equal(dsas.steer(acts, SITES[1]), acts)
    assert torch.equal(dsas.tensor(SITES[1], "u"), torch.zeros(32))
    scales = token_scales(model, dsas, PROMPT)
    assert (scales[scales.site == "L1.mlp_out"].scale == 0).all()


# -- read-outs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gate", ["sigmoid", "relu"])
def test_scales_frame(model, bases, gate):
    dsas = make("dsas", base=bases["mean_shift"], gate=gate, threshold=0.0).fit(
        model, SOURCE, control=CONTROL)
    df = token_scales(model, dsas, PROMPT)
    assert list(df.columns) == TOKEN_COLUMNS
    n_tokens = sum(len(model.to_str_tokens(p)) for p in PROMPT)
    assert len(df) == n_tokens * len(dsas.sites)
    assert df.scale.between(0, 1).all() and set(df.site) == {str(s) for s in dsas.sites}
    first = dsas.sites[0]
    row = df[(df.text_id == 1) & (df.site == str(first))]
    assert row.token.str.cat() == model.tokenizer.decode(model.to_tokens(PROMPT[1])[0])
    assert list(row.position) == list(range(len(row)))
    # The first site sees the untouched model: its scales equal the gate on a plain run.
    _, cache = model.run_with_cache(model.to_tokens(PROMPT[1]))
    plain = dsas.gate(cache[first.hook_name][0].float(), first)
    got = row.scale.to_numpy()
    np.testing.assert_allclose(got, plain.detach().numpy(), atol=1e-6)


def test_probe_report_columns(model, bases):
    dsas = make("dsas", base=bases["iti"]).fit(model, SOURCE, control=CONTROL)
    report = dsas.probe_report()
    assert list(report.columns) == ["site", "accuracy", "train_accuracy", "n_components",
                                    "active"]
    assert list(report.site) == [str(s) for s in dsas.sites]


# -- save / load -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mean_shift", "actadd", "lineas"])
def test_save_load_identical_logits(model, bases, name, tmp_path):
    dsas = make("dsas", base=bases[name], threshold=0.0).fit(model, SOURCE, control=CONTROL)
    dsas.save(tmp_path / "d")
    again = load_steerer(tmp_path / "d", model)
    assert again.base.method == name and again.sites == dsas.sites
    assert again.probe == dsas.probe
    assert torch.equal(_logits(model, again), _logits(model, dsas))
    lam = 2.0 if name == "actadd" else 0.5
    assert torch.equal(_logits(model, again, strength=lam), _logits(model, dsas, strength=lam))


def test_two_set_call_fits_its_own_base(model):
    dsas = make("dsas", target_as_control=True).fit(model, source=SOURCE, target=TARGET)
    assert dsas.base.method == "mean_shift" and dsas.config.base_method == "mean_shift"
    assert dsas.provenance.extra["n_control"] == len(TARGET)


# -- bad input -------------------------------------------------------------------------------
def test_errors(model, bases):
    with pytest.raises(SteerError, match="not fitted"):
        make("dsas", base=make("mean_shift")).fit(model, SOURCE, control=CONTROL)
    other = make("mean_shift").fit(tiny_model("gemma", seed=1), SOURCE, TARGET)
    with pytest.raises(SteerError, match="dsas base: .*fitted on 'tiny-gemma'"):
        make("dsas", base=other).fit(model, SOURCE, control=CONTROL)
    ms = bases["mean_shift"]
    with pytest.raises(SteerError, match="needs a control set"):
        make("dsas", base=ms).fit(model, SOURCE, TARGET)
    with pytest.raises(SteerError, match="control set is empty"):
        make("dsas", base=ms).fit(model, SOURCE, control=[])
    with pytest.raises(SteerError, match="same as the source texts"):
        make("dsas", base=ms).fit(model, SOURCE, control=list(reversed(SOURCE)))
    src = collect(model, SOURCE, ms.sites, progress=False)
    with pytest.raises(SteerError, match="identical to the source"):
        make("dsas", base=ms).fit(model, src, control=src)
    with pytest.raises(SteerError, match="unknown gate 'tanh'"):
        make("dsas", gate="tanh")
    with pytest.raises(SteerError, match="must be a fitted Steerer"):
        make("dsas", base="mean_shift")
    with pytest.raises(SteerError, match="outside dsas's range"):
        make("dsas", base=ms, strength=2.5)
    with pytest.raises(SteerError, match="do not pass sites="):
        make("dsas", base=ms, sites="L0.mlp_out").fit(model, SOURCE, control=CONTROL)
    with pytest.raises(SteerError, match="e2e trains lineas"):
        make("dsas", base=ms, e2e=True)
    with pytest.raises(SteerError, match="at least 2 source and 2 control"):
        make("dsas", base=ms).fit(model, SOURCE[:1], control=CONTROL)


# -- E2E-DSAS ----------------------------------------------------------------------------------
def test_e2e_loss_falls_and_round_trips(model, tmp_path):
    dsas = make("dsas", e2e=True, steps=12, lr=0.05, minibatch=6, threshold=0.0, mu=0.5)
    dsas.fit(model, SOURCE, TARGET, control=CONTROL)
    curve = dsas.loss_frame()
    assert {"loss", "w2", "control"} <= set(curve.columns) and len(curve) == 12
    assert curve.loss.iloc[-1] < curve.loss.iloc[0]
    assert dsas.base.method == "lineas"
    assert not any(p.requires_grad for p in dsas.parameters())
    assert any((dsas.base.tensor(s, "omega") != 1).any() for s in dsas.sites)
    dsas.save(tmp_path / "e2e")
    again = load_steerer(tmp_path / "e2e", model)
    assert torch.equal(_logits(model, again), _logits(model, dsas))


def test_e2e_fine_tunes_a_fitted_lineas_base_without_touching_it(model, bases):
    lin = bases["lineas"]
    before = {k: v.clone() for k, v in lin.tensors.items()}
    dsas = make("dsas", base=lin, e2e=True, steps=2, lr=0.01, minibatch=6, gate="relu",
                threshold=0.0).fit(model, SOURCE, TARGET, control=CONTROL)
    assert len(dsas.loss_frame()) == 2
    assert all(torch.equal(v, lin.tensors[k]) for k, v in before.items())
    with pytest.raises(SteerError, match="needs source and control texts"):
        make("dsas", base=lin, e2e=True, steps=1).fit(model, SOURCE, control=CONTROL)


def test_e2e_uses_lineas_reference_recipe(model):
    dsas = make("dsas", e2e=True, steps=3, threshold=0.0)
    cfg = dsas.config
    assert (cfg.optimizer, cfg.loss, cfg.lr, cfg.minibatch) == ("adam", "mean", None, None)
    dsas.fit(model, SOURCE, TARGET, control=CONTROL)
    assert (dsas.base.config.optimizer, dsas.base.config.loss) == ("adam", "mean")
    assert dsas.loss_frame()["lr"].iloc[0] == pytest.approx(1e-3)
    with pytest.raises(SteerError, match="unknown optimizer 'lbfgs'"):
        make("dsas", e2e=True, optimizer="lbfgs")
    with pytest.raises(SteerError, match="source batch must be >= 4"):
        make("dsas", e2e=True, minibatch=2)
    with pytest.raises(SteerError, match="e2e dsas source batch 8 is larger than the source"):
        make("dsas", base=dsas.base, e2e=True, steps=1, minibatch=8, threshold=0.0).fit(
            model, SOURCE, TARGET, control=CONTROL)
