"""analysis/attribution.py and plots/attribution.py: site and unit attribution on a tiny model."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from typecheck import checks_off
from steerinterp.analysis.attribution import (SITE_COLUMNS, UNIT_COLUMNS, VALIDATION_COLUMNS,
                                              Restricted, attribute, validate_units)
from steerinterp.evaluate.perplexity import perplexity
from steerinterp.models import tiny_model
from steerinterp.plots.attribution import (plot_site_attribution, plot_unit_attribution,
                                           plot_unit_validation)
from steerinterp.plots.base import save_figure
from steerinterp.steer import SteerError, make, steered

SOURCE = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig",
          "I hate you so much", "go away, loser", "this is garbage, moron"]
TARGET = ["the river flows to the sea", "a library holds many books", "the train leaves at noon",
          "plants need light to grow", "the museum opens on monday", "rain fell on the hills"]
EVAL = ["you dumb idiot", "what a stupid fool you are", "I hate this pig", "loser, go away now"]
NEUTRAL = ["the bus was late again", "she plays the violin"]


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2", seed=1)


@pytest.fixture(scope="module")
def steerer(model):
    # gpt2 defaults: ln1 and ln2 of both layers; ln1 fires three times per forward pass.
    return make("mean_shift").fit(model, SOURCE, TARGET)


@pytest.fixture(scope="module")
def units(model, steerer):
    return attribute(model, steerer, EVAL, level="unit", neutral_texts=NEUTRAL, progress=False)


def _mean_nll(model, texts, *steerers, strength=None):
    df = perplexity(model, texts, *steerers, strength=strength, progress=False)
    return float((df["nll"] / df["n_tokens"]).mean())


def _logits(model, steerer=None):
    tokens = model.to_tokens(EVAL[1])
    with steered(model, *([steerer] if steerer is not None else [])):
        return model(tokens)


# --------------------------------------------------------------------------- Restricted


def test_restricted_with_everything_is_the_base_exactly(model, steerer):
    full_masks = {s: torch.ones(s.width(model), dtype=torch.bool) for s in steerer.sites}
    base = _logits(model, steerer)
    for view in (Restricted(steerer), Restricted(steerer, steerer.sites, full_masks)):
        assert view.sites == steerer.sites
        assert torch.equal(_logits(model, view), base)
    assert torch.equal(_logits(model, Restricted(steerer, [])), _logits(model))


def test_restricted_masks_and_sites(model, steerer):
    site = steerer.sites[1]
    mask = torch.zeros(site.width(model), dtype=torch.bool)
    mask[:5] = True
    view = Restricted(steerer, [str(site)], {str(site): mask})
    assert view.sites == [site]
    z = torch.randn(3, site.width(model))
    out, full = view.steer(z, site), steerer.steer(z, site)
    assert torch.equal(out[:, :5], full[:, :5]) and torch.equal(out[:, 5:], z[:, 5:])
    assert torch.equal(view.steer(z, site, 0.0), z)


def test_restricted_bad_inputs(model, steerer):
    with pytest.raises(ValueError, match=r"L1\.mlp_out.*not steered.*L0\.ln1"):
        Restricted(steerer, ["L1.mlp_out"])
    site = steerer.sites[0]
    with pytest.raises(ValueError, match="bool tensor"):
        Restricted(steerer, unit_masks={site: torch.ones(site.width(model))})
    with pytest.raises(ValueError, match="has shape"):
        Restricted(steerer, unit_masks={site: torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not keep"):
        Restricted(steerer, [steerer.sites[1]],
                   {site: torch.ones(site.width(model), dtype=torch.bool)})
    with pytest.raises(SteerError, match="fitted"):
        Restricted(make("mean_shift"))
    with pytest.raises(SteerError, match="not saved"):
        Restricted(steerer).save("/tmp/never")


# --------------------------------------------------------------------------- sites


def test_site_frame_columns_and_effect(model, steerer):
    df = attribute(model, steerer, EVAL, neutral_texts=NEUTRAL, progress=False)
    assert list(df.columns) == SITE_COLUMNS
    assert list(df["site"]) == [str(s) for s in steerer.sites]
    assert list(df["layer"]) == [s.layer for s in steerer.sites]
    expected = _mean_nll(model, EVAL, steerer) - _mean_nll(model, EVAL)
    assert df["effect_all"].nunique() == 1
    assert df["effect_all"].iloc[0] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert df["cost_all"].iloc[0] == pytest.approx(
        _mean_nll(model, NEUTRAL, steerer) - _mean_nll(model, NEUTRAL), rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(df["share_only"], df["effect_only"] / df["effect_all"])
    np.testing.assert_allclose(df["share_drop"],
                               (df["effect_all"] - df["effect_without"]) / df["effect_all"])
    assert df[["cost_only", "cost_without"]].notna().all().all()


def test_single_active_site_carries_the_whole_effect(model, steerer):
    one = copy.deepcopy(steerer)
    active = one.sites[2]
    for site in one.sites:
        if site != active:
            one.tensor(site, "bias").data.zero_()
    df = attribute(model, one, EVAL, progress=False).set_index("site")
    assert df[["cost_only", "cost_without", "cost_all"]].isna().all().all()  # no neutral texts
    row = df.loc[str(active)]
    assert row["effect_only"] == row["effect_all"] != 0
    assert row["share_only"] == 1.0 and row["share_drop"] == 1.0
    rest = df.drop(index=str(active))
    assert (rest["effect_only"] == 0).all() and (rest["share_drop"] == 0).all()
    assert (rest["effect_without"] == rest["effect_all"]).all()
    units = attribute(model, one, EVAL, level="unit", progress=False)
    assert (units.loc[units["site"] != str(active), "attribution"] == 0).all()
    assert units.loc[units["site"] == str(active), "attribution"].abs().sum() > 0


# --------------------------------------------------------------------------- units


def test_unit_frame_columns_and_ranks(model, steerer, units):
    assert list(units.columns) == UNIT_COLUMNS
    assert len(units) == sum(s.width(model) for s in steerer.sites) == units.attrs["n_units"]
    assert list(units["rank"]) == list(range(1, len(units) + 1))
    assert units["attribution"].is_monotonic_decreasing
    np.testing.assert_array_equal(units["abs_attribution"], units["attribution"].abs())
    assert units["neutral_attribution"].notna().all()
    assert units.groupby("site")["unit"].nunique().to_dict() == {
        str(s): s.width(model) for s in steerer.sites}
    top = attribute(model, steerer, EVAL, level="unit", top_k=7, progress=False)
    pd.testing.assert_frame_equal(top.drop(columns="neutral_attribution"),
                                  units.head(7).drop(columns="neutral_attribution"),
                                  rtol=1e-4, atol=1e-8)
    assert top["neutral_attribution"].isna().all()


def test_grad_x_delta_adds_up_to_the_effect(model, steerer):
    # Small λ: the objective is ~linear in the deltas, so the first-order sum is the effect
    # (over every site, ln1's three calls per pass included: the deltas telescope).
    small = attribute(model, steerer, EVAL, level="unit", strength=0.01, progress=False)
    assert small.attrs["attribution_total"] == pytest.approx(small.attrs["effect_all"], rel=0.02)
    # Full strength is not linear; integrating along λ restores completeness.
    one = attribute(model, steerer, EVAL, level="unit", progress=False)
    many = attribute(model, steerer, EVAL, level="unit", steps=4, progress=False)
    effect = many.attrs["effect_all"]
    assert abs(many.attrs["attribution_total"] - effect) < 0.01 * abs(effect)
    assert abs(one.attrs["attribution_total"] - effect) > 0.1 * abs(effect)


def test_one_shift_site_per_site_sum_matches_effect_only(model, steerer):
    site = steerer.sites[3]
    view = Restricted(steerer, [site])
    units = attribute(model, view, EVAL, level="unit", steps=4, progress=False)
    only = attribute(model, steerer, EVAL, progress=False).set_index("site")
    assert set(units["site"]) == {str(site)}
    assert units["attribution"].sum() == pytest.approx(only.loc[str(site), "effect_only"],
                                                       rel=0.02)


def test_top_units_remove_more_effect_than_random(model, steerer, units):
    df = validate_units(model, steerer, units, EVAL, ks=(1, 10), n_random=2, seed=0,
                        progress=False)
    assert list(df.columns) == VALIDATION_COLUMNS
    assert len(df) == 2 * (1 + 2) and set(df["selection"]) == {"top", "random"}
    assert df["effect_all"].iloc[0] == pytest.approx(units.attrs["effect_all"], rel=1e-5)
    removed = (df["effect_all"] - df["effect_remaining"]).groupby(
        [df["k"], df["selection"]]).mean().unstack()
    assert (removed["top"] > removed["random"]).all()
    assert (removed["top"] > 0).all()
    again = validate_units(model, steerer, units, EVAL, ks=(10,), n_random=2, seed=0,
                           progress=False)
    pd.testing.assert_frame_equal(again, df[df["k"] == 10].reset_index(drop=True))


# --------------------------------------------------------------------------- bad input


def test_attribute_bad_inputs(model, steerer, units):
    with pytest.raises(ValueError, match=r"^texts: 1 text\(s\) have no token after the first .*#1: ''"):
        attribute(model, steerer, ["fine text", ""], progress=False)
    with pytest.raises(ValueError, match=r"^neutral_texts: 1 text.*#0"):
        attribute(model, steerer, EVAL, neutral_texts=[""], progress=False)
    with pytest.raises(ValueError, match="texts is empty"):
        attribute(model, steerer, [], progress=False)
    with pytest.raises(ValueError, match="not a single string"):
        attribute(model, steerer, "one text", progress=False)
    with pytest.raises(ValueError, match="level must be"):
        attribute(model, steerer, EVAL, level="head", progress=False)
    with pytest.raises(ValueError, match="top_k"):
        attribute(model, steerer, EVAL, top_k=5, progress=False)
    with pytest.raises(ValueError, match="steps"):
        attribute(model, steerer, EVAL, level="unit", steps=0, progress=False)
    with pytest.raises(ValueError, match="max_tokens"):
        attribute(model, steerer, EVAL, max_tokens=1, progress=False)
    with pytest.raises(ValueError, match="steers no site"):
        attribute(model, Restricted(steerer, []), EVAL, progress=False)
    with pytest.raises(TypeError, match="fitted Steerer"), checks_off():
        attribute(model, "mean_shift", EVAL, progress=False)
    with pytest.raises(SteerError, match="range"):
        attribute(model, steerer, EVAL, strength=2.0, progress=False)
    with pytest.raises(ValueError, match="ks must be"):
        validate_units(model, steerer, units.head(10), EVAL, ks=(5, 11), progress=False)
    with pytest.raises(ValueError, match="missing"):
        validate_units(model, steerer, units.drop(columns="attribution"), EVAL, progress=False)
    bad = units.assign(site="L1.mlp_out")
    with pytest.raises(ValueError, match=r"L1\.mlp_out.*not steered"):
        validate_units(model, steerer, bad, EVAL, progress=False)


# --------------------------------------------------------------------------- plots


def _site_frame(cost: bool) -> pd.DataFrame:
    rows = []
    for layer in range(4):
        for point in ("attn_out", "mlp_out"):
            only = 0.05 * (layer + 1) if point == "mlp_out" else 0.02
            rows.append({"site": f"L{layer}.{point}", "layer": layer, "point": point,
                         "effect_only": only, "effect_without": 0.3 - only, "effect_all": 0.3,
                         "share_only": only / 0.3, "share_drop": only / 0.3,
                         "cost_only": 0.01 if cost else math.nan,
                         "cost_without": math.nan, "cost_all": math.nan})
    return pd.DataFrame(rows, columns=SITE_COLUMNS)


def test_plots_from_hand_made_frames(tmp_path):
    fig = plot_site_attribution(_site_frame(cost=True))
    assert len(fig.axes) == 3
    assert save_figure(fig, _site_frame(True), "sites", tmp_path).exists()
    assert len(plot_site_attribution(_site_frame(cost=False)).axes) == 2
    rng = np.random.default_rng(0)
    unit = pd.DataFrame({"site": ["L0.mlp_out"] * 20 + ["L1.attn_out"] * 20,
                         "layer": [0] * 20 + [1] * 20,
                         "point": ["mlp_out"] * 20 + ["attn_out"] * 20,
                         "unit": list(range(20)) * 2, "attribution": rng.normal(size=40),
                         "neutral_attribution": rng.normal(size=40)})
    fig = plot_unit_attribution(unit, k=12)
    assert len(fig.axes[0].get_yticklabels()) == 12
    assert save_figure(fig, unit, "units", tmp_path).exists()
    val = pd.DataFrame({"k": [1, 10, 100] * 3, "selection": ["top"] * 3 + ["random"] * 6,
                        "draw": [0, 0, 0, 0, 0, 0, 1, 1, 1],
                        "effect_remaining": [0.2, 0.1, 0.0, 0.3, 0.29, 0.25, 0.3, 0.28, 0.26],
                        "effect_all": 0.3})
    path = save_figure(plot_unit_validation(val), val, "validation", tmp_path)
    assert path.exists() and (tmp_path / "validation.csv").exists()


def test_plots_refuse_wrong_frames():
    with pytest.raises(ValueError, match="share_drop"):
        plot_site_attribution(pd.DataFrame({"layer": [0]}))
    with pytest.raises(ValueError, match="rows"):
        plot_unit_validation(pd.DataFrame(columns=VALIDATION_COLUMNS))
    with pytest.raises(ValueError, match="k must be"):
        plot_unit_attribution(pd.DataFrame({"site": ["L0.mlp_out"], "layer": [0],
                                            "point": ["mlp_out"], "unit": [0],
                                            "attribution": [1.0]}), k=0)
