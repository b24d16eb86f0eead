"""λ-sweep fronts (``evaluate.fronts``, ``figures --only fronts``) on the tiny model."""

import pandas as pd
import pytest

import steerinterp.experiments.figures as figures
from steerinterp.experiments.fronts import FRONT_DSAS, FRONT_METHODS, strength_grid
from steerinterp.models import load_model
from steerinterp.plots import plot_fronts
from steerinterp.steer import make



@pytest.fixture(scope="module")
def model():
    return load_model("tiny-gpt2")


def test_figures_quick_fronts(model, tmp_path):
    paths = figures.make_figures(model, tmp_path / "figures", cache=tmp_path / "cache",
                                 only=["fronts"], size="quick", log=lambda msg: None)
    assert [p.stem for p in paths] == ["fronts"] and paths[0].stat().st_size > 2000
    df = pd.read_csv(paths[0].with_suffix(".csv"))
    points = figures.FIGURE_SIZES["quick"].fronts.points
    expected = {*FRONT_METHODS, *(f"dsas+{m}" for m in FRONT_DSAS), "e2e-dsas", "unsteered"}
    assert "lineas" in FRONT_METHODS and set(df["method"]) == expected
    assert len(df) == 1 + points * (len(expected) - 1)
    # maps sweep up to λ = 1; their DSAS variants (E2E-DSAS too) up to the stretched top
    tops = df.groupby("method")["strength"].max()
    assert tops["linear_act"] == 1.0 and tops["dsas+linear_act"] == 2.0
    assert tops["lineas"] == 1.0 and tops["e2e-dsas"] == 2.0
    assert df["diff_accuracy"].notna().sum() == len(df) - 1  # utility measured per condition
    # DSAS rows gate their base; E2E-DSAS gates the LinEAS maps it trains, so it joins
    # LinEAS's family (its row in the figure) as a gated front of its own
    assert df.loc[df["method"] != "unsteered", "gated"].sum() == points * (len(FRONT_DSAS) + 1)
    families = df.groupby("method")["base"].first()
    assert families["e2e-dsas"] == families["dsas+lineas"] == "lineas"
    assert families["dsas+mean_shift"] == "mean_shift" and families["aura"] == "aura"


def test_plot_fronts_one_row_per_family():
    rows = [("unsteered", "unsteered", 0.0, 0.0)]
    rows += [(m, b, lam, lam / 10) for m, b in [("a", "a"), ("dsas+a", "a"), ("e2e", "a"),
                                                 ("b", "b")] for lam in (0.5, 1.0)]
    df = pd.DataFrame(rows, columns=["method", "base", "strength", "delta_ppl_rel"])
    df = df.assign(mean_score=0.2, mean_score_se=0.01, gated=df["method"] != df["base"])
    fig = plot_fronts(df)
    assert len(fig.axes) == 2  # families a and b; PPL only (no accuracy column)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["a", "dsas+a", "e2e", "unsteered"]  # the map first, then its variants


def test_strength_grid_and_its_errors(model, two_sets):
    source, target = two_sets
    ms = make("mean_shift").fit(model, source, target)
    assert strength_grid(ms, 4) == [0.25, 0.5, 0.75, 1.0]
    dsas = make("dsas", base=ms).fit(model, source, control=target)
    assert strength_grid(dsas, 2) == [1.0, 2.0]
    actadd = make("actadd").fit(model, source, target)
    with pytest.raises(ValueError, match="no bounded strength range"):
        strength_grid(actadd, 4)


def test_plot_fronts_names_a_bad_frame():
    with pytest.raises(ValueError, match="plot_fronts needs a non-empty fronts frame"):
        plot_fronts(pd.DataFrame({"method": ["a"], "strength": [1.0]}))
