"""analysis/diagnosis.py and plots/diagnosis.py: per-site perplexity cost and W2 on a tiny model."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

import steerinterp.experiments.figures as figures
from typecheck import checks_off
from steerinterp.analysis import diagnose
from steerinterp.steer.restricted import Restricted
from steerinterp.analysis.diagnosis import DIAGNOSIS_COLUMNS
from steerinterp.collection import collect
from steerinterp.evaluate.perplexity import perplexity, summarize_perplexity
from steerinterp.metrics import w2_sorted
from steerinterp.models import load_model, tiny_model
from steerinterp.plots import plot_diagnosis, save_figure
from steerinterp.steer import SteerError, make

SOURCE = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig",
          "I hate you so much", "go away, loser", "this is garbage, moron"]
TARGET = ["the river flows to the sea", "a library holds many books", "the train leaves at noon",
          "plants need light to grow", "the museum opens on monday", "rain fell on the hills"]
PPL = ["the bus was late again", "she plays the violin", "a cat sat by the door",
       "we walked home after dinner"]
SITE = "L1.mlp_out"


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2", seed=1)


@pytest.fixture(scope="module")
def steerer(model):
    # gpt2 defaults: ln1 and ln2 of both layers (four sites).
    return make("mean_shift").fit(model, SOURCE, TARGET)


@pytest.fixture(scope="module")
def frame(model, steerer):
    return diagnose(model, steerer, PPL, SOURCE, TARGET, progress=False)


def _ppl(model, *steerers, strength=1.0):
    return summarize_perplexity(perplexity(model, PPL, *steerers, strength=strength,
                                           progress=False))["ppl"]


def test_columns_and_numbers_match_perplexity(model, steerer, frame):
    assert list(frame.columns) == DIAGNOSIS_COLUMNS
    assert list(frame["site"]) == [str(s) for s in steerer.sites] and len(frame) == 4
    assert list(frame["layer"]) == [s.layer for s in steerer.sites]
    assert (frame["method"] == "mean_shift").all() and (frame["strength"] == 1.0).all()
    assert frame["ppl_unsteered"].nunique() == 1 and frame["ppl_all"].nunique() == 1
    assert frame["ppl_unsteered"].iloc[0] == pytest.approx(_ppl(model), rel=1e-12)
    assert frame["ppl_all"].iloc[0] == pytest.approx(_ppl(model, steerer), rel=1e-12)
    assert frame["ppl_all"].iloc[0] != frame["ppl_unsteered"].iloc[0]
    site = steerer.sites[2]
    row = frame.set_index("site").loc[str(site)]
    assert row["ppl_only"] == pytest.approx(_ppl(model, Restricted(steerer, [site])), rel=1e-12)
    rest = [s for s in steerer.sites if s != site]
    assert row["ppl_without"] == pytest.approx(_ppl(model, Restricted(steerer, rest)), rel=1e-12)
    for kind in ("all", "only", "without"):
        np.testing.assert_allclose(frame[f"cost_{kind}"],
                                   frame[f"ppl_{kind}"] / frame["ppl_unsteered"] - 1)
    np.testing.assert_allclose(frame["share_drop"],
                               np.log(frame["ppl_all"] / frame["ppl_without"])
                               / np.log(frame["ppl_all"] / frame["ppl_unsteered"]))
    assert (frame["n_w2"] == 6).all() and frame[["w2_before", "w2_after"]].notna().all().all()


def test_without_texts_w2_is_missing(model, steerer, frame):
    df = diagnose(model, steerer, PPL, progress=False)
    assert df[["w2_before", "w2_after"]].isna().all().all() and (df["n_w2"] == 0).all()
    pd.testing.assert_frame_equal(df.drop(columns=["w2_before", "w2_after", "n_w2"]),
                                  frame.drop(columns=["w2_before", "w2_after", "n_w2"]))


def test_one_active_site_carries_the_whole_cost(model, steerer):
    one = copy.deepcopy(steerer)
    active = one.sites[1]
    for site in one.sites:
        if site != active:
            one.tensor(site, "bias").data.zero_()  # steered, but an exact identity
    df = diagnose(model, one, PPL, progress=False).set_index("site")
    row = df.loc[str(active)]
    assert row["ppl_only"] == row["ppl_all"] != row["ppl_unsteered"]
    assert row["ppl_without"] == row["ppl_unsteered"] and row["share_drop"] == 1.0
    rest = df.drop(index=str(active))
    assert (rest["ppl_only"] == rest["ppl_unsteered"]).all()
    assert (rest["ppl_without"] == rest["ppl_all"]).all() and (rest["share_drop"] == 0).all()


def test_single_site_steerer(model):
    single = make("mean_shift", sites=[SITE]).fit(model, SOURCE, TARGET)
    df = diagnose(model, single, PPL, progress=False)
    assert list(df["site"]) == [SITE]
    assert df["ppl_only"].iloc[0] == df["ppl_all"].iloc[0] == pytest.approx(_ppl(model, single))
    assert df["ppl_without"].iloc[0] == df["ppl_unsteered"].iloc[0]
    assert df["share_drop"].iloc[0] == 1.0


def test_strength_zero_changes_nothing(model, steerer):
    df = diagnose(model, steerer, PPL, SOURCE, TARGET, strength=0.0, progress=False)
    base = df["ppl_unsteered"].iloc[0]
    for column in ("ppl_all", "ppl_only", "ppl_without"):
        assert (df[column] == base).all(), column
    assert (df[["cost_all", "cost_only", "cost_without"]] == 0).all().all()
    assert df["share_drop"].isna().all()  # no cost to share
    assert (df["w2_after"] == df["w2_before"]).all()


def _pooled(model, texts, site):
    return collect(model, texts, [site], progress=False)[site].double()


def test_mean_shift_removes_exactly_the_mean_term_of_w2(model):
    # W2²(u, v) per unit = (ū − v̄)² + W2²(u − ū, v − v̄) for equal counts; a single-site mean
    # shift fitted on the same texts moves ū onto v̄ and leaves the centred part alone.
    single = make("mean_shift", sites=[SITE]).fit(model, SOURCE, TARGET)
    row = diagnose(model, single, PPL, SOURCE, TARGET, progress=False).iloc[0]
    src, tgt = _pooled(model, SOURCE, single.sites[0]), _pooled(model, TARGET, single.sites[0])
    before = w2_sorted(src, tgt)
    mean_term = (src.mean(0) - tgt.mean(0)).pow(2)
    assert row["n_w2"] == 6
    assert row["w2_before"] == pytest.approx(float(before.mean()), rel=1e-6)
    assert row["w2_after"] == pytest.approx(float((before - mean_term).mean()), rel=1e-4)
    assert row["w2_after"] < 0.9 * row["w2_before"]


def test_linear_act_w2_after_is_the_fit_residual(model):
    # With equal counts the sorted least-squares map has ω ≥ 0, keeps the order, so the W2
    # left after steering is exactly the fit's mean squared residual on sorted pairs.
    lin = make("linear_act", sites=[SITE], support=False).fit(model, SOURCE, TARGET)
    site = lin.sites[0]
    row = diagnose(model, lin, PPL, SOURCE, TARGET, progress=False).iloc[0]
    src = torch.sort(_pooled(model, SOURCE, site), dim=0).values
    tgt = torch.sort(_pooled(model, TARGET, site), dim=0).values
    omega, bias = lin.tensor(site, "omega").double(), lin.tensor(site, "bias").double()
    residual = (omega * src + bias - tgt).pow(2).mean(0).mean()
    assert row["w2_after"] == pytest.approx(float(residual), rel=1e-3, abs=1e-7)
    assert row["w2_after"] < 0.5 * row["w2_before"]


def test_unequal_counts_are_truncated(model, steerer):
    df = diagnose(model, steerer, PPL[:1], SOURCE, TARGET[:4], progress=False)
    assert (df["n_w2"] == 4).all()
    site = steerer.sites[-1]
    src, tgt = _pooled(model, SOURCE[:4], site), _pooled(model, TARGET[:4], site)
    assert df["w2_before"].iloc[-1] == pytest.approx(float(w2_sorted(src, tgt).mean()),
                                                     rel=1e-6)


def test_bad_inputs(model, steerer):
    with pytest.raises(TypeError, match="fitted Steerer, got str"), checks_off():
        diagnose(model, "mean_shift", PPL, progress=False)
    with pytest.raises(SteerError, match="not fitted"):
        diagnose(model, make("mean_shift"), PPL, progress=False)
    with pytest.raises(ValueError, match="ppl_texts is empty"):
        diagnose(model, steerer, [], progress=False)
    with pytest.raises(ValueError, match="ppl_texts must be a list"):
        diagnose(model, steerer, "one text", progress=False)
    with pytest.raises(ValueError, match="source_texts given alone.*target_texts"):
        diagnose(model, steerer, PPL, SOURCE, progress=False)
    with pytest.raises(ValueError, match="target_texts given alone"):
        diagnose(model, steerer, PPL, target_texts=TARGET, progress=False)
    with pytest.raises(ValueError, match="source_texts is empty"):
        diagnose(model, steerer, PPL, [], TARGET, progress=False)
    with pytest.raises(SteerError, match=r"strength 2.0 is outside mean_shift's range"):
        diagnose(model, steerer, PPL, strength=2.0, progress=False)
    with pytest.raises(ValueError, match="steers no site"):
        diagnose(model, Restricted(steerer, []), PPL, progress=False)
    with pytest.raises(SteerError, match="fitted"):
        diagnose(tiny_model("gemma", seed=0), steerer, PPL, progress=False)


# --------------------------------------------------------------------------- plot


def _hand_frame(w2: bool) -> pd.DataFrame:
    rows = []
    for layer in range(3):
        for point in ("attn_out", "mlp_out"):
            rows.append({"site": f"L{layer}.{point}", "layer": layer, "point": point,
                         "method": "mean_shift", "strength": 1.0, "ppl_unsteered": 10.0,
                         "ppl_all": 300.0, "ppl_only": 11.0 * 3 ** layer,
                         "ppl_without": 250.0 / (layer + 1),
                         "w2_before": 2.0 * (layer + 1) if w2 else math.nan,
                         "w2_after": 0.01 * (layer + 1) if w2 else math.nan,
                         "n_w2": 6 if w2 else 0})
    return pd.DataFrame(rows)


def test_plot_from_frames(tmp_path, frame):
    fig = plot_diagnosis(_hand_frame(w2=True))
    assert len(fig.axes) == 2
    assert fig.axes[0].get_yscale() == "log" and fig.axes[1].get_yscale() == "log"
    assert "mean_shift" in fig._suptitle.get_text()
    assert len(plot_diagnosis(_hand_frame(w2=False)).axes) == 1
    path = save_figure(plot_diagnosis(frame), frame, "diagnosis", tmp_path)
    assert path.exists() and (tmp_path / "diagnosis.csv").exists()
    with pytest.raises(ValueError, match="ppl_without"):
        plot_diagnosis(frame.drop(columns="ppl_without"))
    with pytest.raises(ValueError, match="rows"):
        plot_diagnosis(frame.iloc[:0])


def test_figures_quick_diagnosis(tmp_path):
    paths = figures.make_figures(load_model("tiny-gpt2"), tmp_path / "figures",
                                 cache=tmp_path / "cache", only=["diagnosis", "diagnosis_lineas"],
                                 size="quick", log=lambda msg: None)
    assert {p.stem for p in paths} == {f"diagnosis_{m}"
                                       for m in ("mean_shift", "linear_act", "lineas")}
    for p in paths:
        df = pd.read_csv(p.with_suffix(".csv"))
        assert list(df.columns) == DIAGNOSIS_COLUMNS and df["w2_before"].notna().all()
        assert (df["strength"] == 1.0).all() and p.stat().st_size > 2000
