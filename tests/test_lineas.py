"""LinEAS and the training loop on the tiny model."""

import math

import numpy as np
import pytest
import torch

from steerinterp.collection import collect
from steerinterp.metrics import _matched_sorted, w2_sorted
from steerinterp.models import tiny_model
from steerinterp.sites import Site
from steerinterp.steer import SteerError, load_steerer, make, steered
from steerinterp.steer.lineas import LineasConfig
from steerinterp.train import (TrainingError, TrainSettings, group_soft_threshold,
                               make_optimizer, matched_sorted, plateau, site_terms,
                               soft_threshold, total, w2_matched)

SRC = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig",
       "I hate you so much", "go away, loser", "this is garbage, moron"]
TGT = ["the river flows to the sea", "a library holds many books", "the train leaves at noon",
       "plants need light to grow", "the museum opens on monday", "rain fell on the hills"]


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma", seed=1)


@pytest.fixture(scope="module")
def fitted(model):
    return make("lineas", steps=60, lr=0.05).fit(model, source=SRC, target=TGT)


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
    assert curve["lr"].iloc[0] == pytest.approx(0.05) and curve["lr"].iloc[-1] < 0.01 * 0.05


# The recipe before issue 12, kept as named options.
LEGACY = {"optimizer": "sgd", "lr": 1.0, "loss": "normalize", "target_batch": "minibatch",
          "lr_floor": 0.0}


@pytest.mark.parametrize("opts", [{"optimizer": "adam", "lr": 0.05},
                                  {"optimizer": "sgd", "lr": 1.0}, LEGACY],
                         ids=["adam", "sgd", "legacy"])
def test_adam_and_sgd_both_reduce_the_loss(model, opts):
    curve = make("lineas", steps=40, **opts).fit(model, source=SRC, target=TGT).loss_frame()
    assert curve["loss"].iloc[-5:].mean() < 0.7 * curve["loss"].iloc[:3].mean()


def test_bf16_autocast_trains_and_stays_close_to_fp32(model):
    """bf16 autocast (our speed option) changes only the forward's compute dtype: the steerer's
    tensors stay float32 and the fit lands near the float32 one."""
    fits = {p: make("lineas", steps=40, lr=0.05, precision=p).fit(model, SRC, TGT)
            for p in ("fp32", "bf16")}
    curves = {p: f.loss_frame()["loss"] for p, f in fits.items()}
    assert curves["bf16"].iloc[-5:].mean() < 0.7 * curves["bf16"].iloc[:3].mean()
    assert curves["bf16"].iloc[-5:].mean() == pytest.approx(curves["fp32"].iloc[-5:].mean(),
                                                            rel=0.1)
    assert all(t.dtype == torch.float32 for t in fits["bf16"].tensors.values())
    assert fits["bf16"].config.train_settings().precision == "bf16"


def test_default_recipe_is_the_reference(model):
    cfg = LineasConfig()
    settings = cfg.train_settings()
    assert (settings.optimizer, settings.lr, settings.lr_floor, settings.loss, settings.target,
            settings.steps) == ("adam", 1e-3, 1e-3, "mean", "full", 1000)
    assert (cfg.gamma, cfg.strength, cfg.minibatch) == (0.0, 1.0, None)
    assert LineasConfig(optimizer="sgd").train_settings().lr == 0.1  # paper §3.3
    opt, sched = make_optimizer([torch.zeros(3, requires_grad=True)], settings)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["betas"] == (0.9, 0.9) and opt.defaults["weight_decay"] == 0
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert sched.eta_min == pytest.approx(1e-6) and sched.T_max == 1000
    s = make("lineas", steps=4, lr=0.01).fit(model, source=SRC, target=TGT)
    assert s.provenance.extra["train"]["batch_size"] == len(SRC)  # min(20, n_source)
    floor = 0.01 * 1e-3
    expected = [floor + (0.01 - floor) * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    np.testing.assert_allclose(s.loss_frame()["lr"], expected, rtol=1e-6)


def _hazen(x: np.ndarray, k: int) -> np.ndarray:
    """Per-unit quantiles at (i + ½)/k with numpy's own Hazen rule: [k, d]."""
    return np.quantile(x, (np.arange(k) + 0.5) / k, axis=0, method="hazen")


def test_reference_reduction_is_mean_over_units_then_sites():
    gen = torch.Generator().manual_seed(0)
    sites = [Site(0, "mlp_out"), Site(1, "mlp_out"), Site(1, "attn_out")]
    widths = [3, 5, 8]  # unequal, so a mean over all units would differ
    u = {s: torch.randn(6, w, generator=gen) * (i + 1) for i, (s, w) in
         enumerate(zip(sites, widths))}
    v = {s: torch.randn(6, w, generator=gen) + i for i, (s, w) in enumerate(zip(sites, widths))}
    per_unit = {s: w2_matched(u[s], v[s]) for s in sites}
    hand = [((np.sort(u[s].numpy(), 0) - np.sort(v[s].numpy(), 0)) ** 2).mean(0) for s in sites]
    got = total(site_terms(per_unit, "mean"), "mean")
    assert got.item() == pytest.approx(np.mean([h.mean() for h in hand]), rel=1e-6)
    assert total(site_terms(per_unit, "sum"), "sum").item() == pytest.approx(
        sum(h.sum() for h in hand), rel=1e-6)
    for s in sites:  # equal counts: exactly the plain sorted pairing
        torch.testing.assert_close(per_unit[s], w2_sorted(u[s], v[s]))


def test_unequal_counts_are_quantile_matched():
    gen = torch.Generator().manual_seed(1)
    for n, m in ((5, 8), (8, 3)):
        u, v = torch.randn(n, 4, generator=gen), torch.randn(m, 4, generator=gen) + 1
        k = max(n, m)
        hand = ((_hazen(u.numpy(), k) - _hazen(v.numpy(), k)) ** 2).mean(0)
        np.testing.assert_allclose(w2_matched(u, v).numpy(), hand, rtol=1e-5)
        # the same rule as Linear-AcT's unequal-count fit (metrics.sorted_affine_fit)
        np.testing.assert_allclose(matched_sorted(u, k).numpy(), _matched_sorted(u, k).numpy(),
                                   rtol=1e-6, atol=1e-6)


def test_full_target_loss_with_unequal_counts(model):
    """Step 0 runs the identity maps: its loss is the quantile-matched W2 between the
    unsteered source batch (all 6 texts) and all 4 target texts, averaged over units, sites."""
    s = make("lineas", steps=1, lr=1e-3, minibatch=6).fit(model, source=SRC, target=TGT[:4])
    assert s.provenance.n_target == 4  # a target smaller than the batch is fine
    src = collect(model, SRC, s.sites, progress=False)
    tgt = collect(model, TGT[:4], s.sites, progress=False)
    hand = np.mean([((_hazen(src[x].numpy(), 6) - _hazen(tgt[x].numpy(), 6)) ** 2).mean()
                    for x in s.sites])
    assert s.loss_frame()["loss"].iloc[0] == pytest.approx(hand, rel=1e-4)


def test_same_seed_same_fit(model):
    def fit(seed):
        return make("lineas", steps=6, lr=0.05, minibatch=4, seed=seed).fit(model, SRC, TGT)

    a, b, c = fit(0), fit(0), fit(1)
    assert a.loss_frame().equals(b.loss_frame())
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert not a.loss_frame()["loss"].equals(c.loss_frame()["loss"])  # other batches


def test_plateau():
    flat = [{"step": i, "lr": 0.1, "loss": 1.0 + (0.01 if i % 2 else 0.0)} for i in range(100)]
    assert plateau(flat)["converged"] and plateau(flat)["window"] == 10
    falling = [{"step": i, "lr": 0.1, "loss": 1.0 - 0.005 * i} for i in range(100)]
    p = plateau(falling)
    assert not p["converged"] and p["rel_change"] > 0.01
    # Cosine to ~0: the last 10% of steps barely move, yet the fit is still improving. The
    # window covers the last 10% of the lr budget instead (~the last 40% of the steps).
    lrs = [0.5 * (1 + math.cos(math.pi * i / 100)) for i in range(100)]
    loss = np.cumsum([0.0] + lrs[:-1])
    cosine = [{"step": i, "lr": lr, "loss": 100.0 - x} for i, (lr, x) in enumerate(zip(lrs, loss))]
    p = plateau(cosine)
    assert 30 <= p["window"] <= 45 and not p["converged"]
    assert not plateau([])["converged"] and not plateau(flat[:1])["converged"]


def test_heldout_w2_and_plateau_readouts(model, fitted):
    df = fitted.heldout_w2(model, SRC[:4], TGT[2:])
    assert list(df.columns) == ["site", "layer", "point", "w2_unsteered", "w2_steered", "ratio"]
    assert list(df["site"]) == [str(s) for s in fitted.sites]
    assert (df["ratio"] < 1).all()  # trained maps move held-out source toward the target
    assert set(fitted.plateau()) == {"steps", "window", "share", "tol", "rel_change",
                                     "converged"}


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


def test_adam_prox_switches_everything_off_from_gamma_one_half(model):
    """Adam's first step moves every coordinate by lr: L1 leaves lr(1 − γ), the group
    threshold is lr·γ·√d, so with λ1 = λG = 1 all sites go off exactly when γ ≥ 0.5."""
    def support(gamma):
        return make("lineas", steps=3, lr=0.05, gamma=gamma).fit(
            model, source=SRC, target=TGT).support()["support"]

    assert (support(0.5) == 0).all() and (support(0.45) == 1).all()


def test_moderate_gamma_switches_whole_sites_off(model, fitted):
    # SGD: its prox thresholds (lr·γ·λ) scale with the loss's gradients; Adam's steps do not.
    support = make("lineas", steps=60, lr=1.0, gamma=0.01, optimizer="sgd").fit(
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


def test_unequal_sizes(model):
    s = make("lineas", steps=3, lr=0.1, minibatch=5).fit(model, source=SRC, target=TGT[:4])
    assert s.provenance.n_source == 6 and s.provenance.n_target == 4
    legacy = make("lineas", steps=3, **LEGACY).fit(model, source=SRC, target=TGT[:4])
    assert legacy.provenance.extra["train"]["batch_size"] == 4  # equal minibatches: clipped


def test_old_configs_load_with_their_recipe():
    cfg = LineasConfig(normalize=True, lr=0.1, minibatch=32)  # as saved before issue 12
    assert (cfg.optimizer, cfg.loss, cfg.target_batch, cfg.lr_floor, cfg.normalize) == (
        "sgd", "normalize", "minibatch", 0.0, None)
    assert LineasConfig(normalize=False).loss == "sum"


def test_target_store_accepted_source_store_refused(model):
    tgt = collect(model, TGT, "all.attn_out,all.mlp_out", progress=False)
    make("lineas", steps=2).fit(model, source=SRC, target=tgt)
    with pytest.raises(SteerError, match="needs source texts"):
        make("lineas", steps=2).fit(model, source=tgt, target=TGT)


def test_divergence_is_stopped_with_step_and_site(model):
    with pytest.raises(TrainingError, match=r"at step \d+ \(non-finite at: L\d\.\w+"):
        make("lineas", steps=50, lr=1e6, optimizer="sgd").fit(model, source=SRC, target=TGT)


def test_bad_config():
    with pytest.raises(SteerError, match="lr > 0"):
        make("lineas", lr=0)
    with pytest.raises(SteerError, match=">= 0"):
        make("lineas", gamma=-1)
    with pytest.raises(SteerError, match="unknown optimizer 'adamw'; use one of adam, sgd"):
        make("lineas", optimizer="adamw")
    with pytest.raises(SteerError, match="unknown loss 'median'"):
        make("lineas", loss="median")
    with pytest.raises(SteerError, match="source batch must be >= 4.*got 3"):
        make("lineas", minibatch=3)
    with pytest.raises(ValueError, match="unknown target batch 'some'"):
        TrainSettings(target="some")
    with pytest.raises(SteerError, match="unknown precision 'fp16'; use one of fp32, bf16"):
        make("lineas", precision="fp16")
    with pytest.raises(SteerError, match="unknown precision 'half'"):
        make("dsas", e2e=True, precision="half")


def test_bad_set_sizes(model):
    with pytest.raises(SteerError, match=r"source batch 8 is larger than the source set \(6"):
        make("lineas", steps=1, minibatch=8).fit(model, source=SRC, target=TGT)
    with pytest.raises(SteerError, match="at least 4 source texts.*got 3"):
        make("lineas", steps=1).fit(model, source=SRC[:3], target=TGT)
    with pytest.raises(SteerError, match="at least 2 target samples.*got 1"):
        make("lineas", steps=1).fit(model, source=SRC, target=TGT[:1])
