"""LinEAS and the training loop on the tiny model."""

import pytest
import torch

from steerinterp.collection import collect
from steerinterp.models import tiny_model
from steerinterp.steer import SteerError, load_steerer, make, steered
from steerinterp.train import TrainingError, group_soft_threshold, soft_threshold

SRC = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig",
       "I hate you so much", "go away, loser", "this is garbage, moron"]
TGT = ["the river flows to the sea", "a library holds many books", "the train leaves at noon",
       "plants need light to grow", "the museum opens on monday", "rain fell on the hills"]


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma", seed=1)


@pytest.fixture(scope="module")
def fitted(model):
    return make("lineas", steps=60, lr=1.0).fit(model, source=SRC, target=TGT)


def test_soft_threshold_closed_form():
    v = torch.tensor([-3.0, -0.5, 0.0, 0.2, 2.0])
    assert torch.equal(soft_threshold(v, 1.0), torch.tensor([-2.0, 0.0, 0.0, 0.0, 1.0]))


def test_group_soft_threshold_closed_form():
    v = torch.tensor([3.0, 4.0])  # norm 5
    torch.testing.assert_close(group_soft_threshold(v, 1.0), v * 0.8)
    assert torch.equal(group_soft_threshold(v, 5.0), torch.zeros(2))
    assert torch.equal(group_soft_threshold(torch.zeros(3), 0.0), torch.zeros(3))  # 0/0 guard


def test_loss_falls(fitted):
    curve = fitted.loss_frame()
    assert len(curve) == 60 and {"step", "lr", "loss", "w2"} <= set(curve.columns)
    assert curve["loss"].iloc[-5:].mean() < 0.5 * curve["loss"].iloc[:3].mean()
    assert curve["lr"].iloc[0] == pytest.approx(1.0) and curve["lr"].iloc[-1] < 0.01


def test_moves_source_toward_target(model, fitted):
    from steerinterp.metrics import w2_sorted
    sites = fitted.sites
    tgt = collect(model, TGT, sites, progress=False)
    before = collect(model, SRC, sites, progress=False)
    with steered(model, fitted):
        after = collect(model, SRC, sites, progress=False)
    w2 = lambda s: sum(w2_sorted(s[x], tgt[x]).sum() for x in sites)  # noqa: E731
    assert w2(after) < 0.5 * w2(before)


def test_large_gamma_gives_identity(model):
    s = make("lineas", steps=20, lr=0.1, gamma=10.0).fit(model, source=SRC, target=TGT)
    assert (s.support()["support"] == 0).all()
    tokens = model.to_tokens("hello there")
    with torch.no_grad():
        plain = model(tokens)
        with steered(model, s):
            torch.testing.assert_close(model(tokens), plain)


def test_moderate_gamma_switches_whole_sites_off(model, fitted):
    support = make("lineas", steps=60, lr=1.0, gamma=0.01).fit(
        model, source=SRC, target=TGT).support()["support"]
    assert (support == 0).any() and (support > 0).any()  # the group lasso selects sites
    assert support.mean() < fitted.support()["support"].mean()


def test_support_table(fitted):
    df = fitted.support()
    assert list(df.columns) == ["site", "layer", "point", "support", "omega_norm", "bias_norm",
                                "group_norm"]
    assert df["support"].between(0, 1).all() and (df["support"] == 1).all()


def test_inverse_undoes_the_map(model, fitted):
    inv = fitted.inverse()
    for site in fitted.sites:
        z = torch.randn(4, site.width(model))
        torch.testing.assert_close(inv.steer(fitted.steer(z, site), site), z, atol=1e-4,
                                   rtol=1e-4)


def test_composition(model, fitted):
    other = make("lineas", steps=10, lr=0.1).fit(model, source=TGT, target=SRC)
    both = fitted.compose(other)
    for site in fitted.sites:
        z = torch.randn(4, site.width(model))
        torch.testing.assert_close(both.steer(z, site), other.steer(fitted.steer(z, site), site),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(SteerError, match="same model"):
        fitted.compose(make("mean_shift"))


def test_save_load_keeps_curve(model, fitted, tmp_path):
    fitted.save(tmp_path / "l")
    again = load_steerer(tmp_path / "l", model)
    assert again.loss_frame().equals(fitted.loss_frame())
    tokens = model.to_tokens("hello there")
    with torch.no_grad():
        with steered(model, fitted):
            a = model(tokens)
        with steered(model, again):
            assert torch.equal(model(tokens), a)


def test_unequal_sizes_are_subsampled(model):
    s = make("lineas", steps=3, lr=0.1, minibatch=32).fit(model, source=SRC, target=TGT[:4])
    assert s.provenance["n_source"] == 6 and s.provenance["n_target"] == 4


def test_target_store_accepted_source_store_refused(model):
    tgt = collect(model, TGT, "all.attn_out,all.mlp_out", progress=False)
    make("lineas", steps=2).fit(model, source=SRC, target=tgt)
    with pytest.raises(SteerError, match="needs source texts"):
        make("lineas", steps=2).fit(model, source=tgt, target=TGT)


def test_divergence_is_stopped_with_step_and_site(model):
    with pytest.raises(TrainingError, match=r"at step \d+ \(non-finite at: L\d\.\w+"):
        make("lineas", steps=50, lr=1e6).fit(model, source=SRC, target=TGT)


def test_bad_config():
    with pytest.raises(SteerError, match="lr > 0"):
        make("lineas", lr=0)
    with pytest.raises(SteerError, match=">= 0"):
        make("lineas", gamma=-1)
