"""analysis/sparsity.py and plots/sparsity.py: LinEAS along a γ path on a tiny model."""

import copy
import shutil

import numpy as np
import pandas as pd
import pytest

from typecheck import checks_off
from steerinterp.analysis.experts import AURA_LINEAS_COLUMNS
from steerinterp.analysis.sparsity import (SPARSITY_COLUMNS, fit_lineas_path, layer_sparsity,
                                           merge_evaluation)
from steerinterp.models import tiny_model
from steerinterp.plots.base import save_figure
from steerinterp.plots.sparsity import (plot_aura_lineas_overlap, plot_support_path,
                                       plot_surviving_layers)
from steerinterp.steer import SteerError, make
from steerinterp.steer.lineas import Lineas

SRC = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig",
       "I hate you so much", "go away, loser", "this is garbage, moron"]
TGT = ["the river flows to the sea", "a library holds many books", "the train leaves at noon",
       "plants need light to grow", "the museum opens on monday", "rain fell on the hills"]
GAMMAS = [0.0, 0.003, 0.01, 0.03, 10.0]
# SGD: its steps scale with the gradients, so this γ path spans dense to empty; under Adam
# (steps ~lr everywhere) every site switches off at once near γ = 0.5 (see steer/lineas.py).
FAST = {"steps": 30, "lr": 1.0, "optimizer": "sgd"}


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma", seed=1)


@pytest.fixture(scope="module")
def path(model):
    return fit_lineas_path(model, SRC, TGT, GAMMAS, FAST, progress=False)


@pytest.fixture(scope="module")
def frame(path):
    return layer_sparsity(path)


def test_columns_and_ranges(path, frame):
    assert list(frame.columns) == SPARSITY_COLUMNS
    n_sites = len(path[0].sites)
    assert len(frame) == len(GAMMAS) * n_sites
    assert list(frame["gamma"].unique()) == GAMMAS
    assert frame["support"].between(0, 1).all()
    assert (frame["n_units"] == 32).all()
    assert (frame["lambda1"] == 1.0).all() and (frame["lambda_group"] == 1.0).all()
    assert frame["active"].dtype == bool
    first = frame[frame["gamma"] == 0.0]
    assert list(first["site"]) == [str(s) for s in sorted(path[0].sites)]
    assert list(first["layer"]) == [s.layer for s in sorted(path[0].sites)]


def test_support_shrinks_as_gamma_grows(frame):
    by_gamma = frame.groupby("gamma").agg(support=("support", "mean"), on=("active", "sum"))
    assert (np.diff(by_gamma["support"]) <= 1e-12).all(), by_gamma
    assert (np.diff(by_gamma["on"]) <= 0).all(), by_gamma
    assert by_gamma["support"].iloc[0] == 1.0 and by_gamma["on"].iloc[-1] == 0
    # Somewhere in between the group lasso keeps some sites and drops others.
    assert ((by_gamma["on"] > 0) & (by_gamma["on"] < frame["site"].nunique())).any()


def test_zero_group_norm_is_inactive(path):
    s = copy.deepcopy(path[0])
    off = s.sites[1]
    s.tensor(off, "omega").data.fill_(1.0)
    s.tensor(off, "bias").data.zero_()
    df = layer_sparsity([s]).set_index("site")
    assert not df.loc[str(off), "active"] and df.loc[str(off), "group_norm"] == 0
    assert df.loc[str(off), "support"] == 0
    assert df.drop(index=str(off))["active"].all()


def test_evaluation_merge(path, frame):
    ev = pd.DataFrame({"gamma": [0.1 * 0.3 * (1 / 3) * 3, 0.0, 10.0, 123.0],  # 0.03 ± rounding
                       "toxic_share": [0.2, 0.5, 0.6, 0.0], "ppl": [20.0, 19.0, 30.0, 1.0]})
    df = layer_sparsity(path, evaluation=ev)
    assert list(df.columns) == SPARSITY_COLUMNS + ["toxic_share", "ppl"]
    assert len(df) == len(frame)
    per_gamma = df.groupby("gamma")["toxic_share"].first()
    assert per_gamma[0.03] == 0.2 and per_gamma[0.0] == 0.5 and np.isnan(per_gamma[0.003])


def test_evaluation_errors(frame):
    with pytest.raises(ValueError, match="'gamma' column"):
        merge_evaluation(frame, pd.DataFrame({"ppl": [1.0]}))
    with pytest.raises(ValueError, match="one row per gamma"):
        merge_evaluation(frame, pd.DataFrame({"gamma": [0.0, 0.0], "ppl": [1.0, 2.0]}))
    with pytest.raises(ValueError, match=r"\['support'\] clash"):
        merge_evaluation(frame, pd.DataFrame({"gamma": [0.0], "support": [1.0]}))
    with pytest.raises(ValueError, match="no evaluation gamma"):
        merge_evaluation(frame, pd.DataFrame({"gamma": [5.0], "ppl": [1.0]}))


def test_cache_reuses_and_resumes(model, tmp_path, monkeypatch):
    opts = {"steps": 2, "lr": 0.1}
    first = fit_lineas_path(model, SRC, TGT, [0.0, 0.01], opts, cache_dir=tmp_path,
                            progress=False)
    entries = sorted(p.name for p in tmp_path.iterdir())  # "=0.01_" sorts before "=0_"
    assert [e.split("_")[1] for e in entries] == ["gamma=0.01", "gamma=0"]
    fits, real_fit = [], Lineas.fit

    def counting_fit(self, *args, **kwargs):
        fits.append(self.config.gamma)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(Lineas, "fit", counting_fit)
    again = fit_lineas_path(model, SRC, TGT, [0.0, 0.01], opts, cache_dir=tmp_path,
                            progress=False)
    assert not fits  # both loaded from the cache
    for a, b in zip(first, again):
        assert a.config == b.config
        assert all(np.array_equal(a.tensors[k].detach(), b.tensors[k].detach()) for k in a.tensors)
    shutil.rmtree(tmp_path / entries[0])  # an interrupted path: only the missing γ is refitted
    fit_lineas_path(model, SRC, TGT, [0.0, 0.01], opts, cache_dir=tmp_path, progress=False)
    assert fits == [0.01]
    fit_lineas_path(model, SRC, TGT[:5], [0.0], opts, cache_dir=tmp_path, progress=False)
    assert fits == [0.01, 0.0]  # other data: another cache key, a fresh fit


def test_bad_inputs(model, path):
    with pytest.raises(ValueError, match="empty"):
        fit_lineas_path(model, SRC, TGT, [])
    with pytest.raises(ValueError, match=">= 0"):
        fit_lineas_path(model, SRC, TGT, [0.1, -1.0])
    with pytest.raises(ValueError, match="distinct"):
        fit_lineas_path(model, SRC, TGT, [0.1, 0.1])
    with pytest.raises(ValueError, match="must not set 'gamma'"):
        fit_lineas_path(model, SRC, TGT, [0.1], {"gamma": 0.2})
    with pytest.raises(SteerError, match="unknown option"):
        fit_lineas_path(model, SRC, TGT, [0.1], {"stpes": 3})
    with pytest.raises(ValueError, match="at least one"):
        layer_sparsity([])
    with pytest.raises(TypeError, match="item 1 is MeanShift"), checks_off():
        layer_sparsity([path[0], make("mean_shift").fit(model, SRC, TGT)])
    with pytest.raises(ValueError, match="not fitted"):
        layer_sparsity([make("lineas")])
    with pytest.raises(ValueError, match="2 gammas for 1 steerers"):
        layer_sparsity(path[:1], gammas=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"L1\.mlp_pre are not steered .*its sites: L0\.attn_out"):
        layer_sparsity(path, sites=["L0.attn_out", "L1.mlp_pre"])
    assert set(layer_sparsity(path, sites="L0.mlp_out")["site"]) == {"L0.mlp_out"}


# -- plots -------------------------------------------------------------------------------------
def _hand_frame(evaluation: bool = False) -> pd.DataFrame:
    rows = []
    for g in [0.0, 0.01, 0.1, 1.0]:
        for layer in range(4):
            for point in ("attn_out", "mlp_out"):
                norm = max(0.0, 1.0 - g * layer) * (layer + 1)
                rows.append({"gamma": g, "lambda1": 1.0, "lambda_group": 1.0,
                             "site": f"L{layer}.{point}", "layer": layer, "point": point,
                             "n_units": 8, "support": min(1.0, norm), "omega_norm": norm / 2,
                             "bias_norm": norm / 2, "group_norm": norm, "active": norm > 0})
    df = pd.DataFrame(rows)
    if evaluation:
        ev = pd.DataFrame({"gamma": [0.0, 0.01, 0.1, 1.0], "toxic_share": [.1, .1, .2, .5],
                           "ppl": [25.0, 22.0, 20.0, 19.0], "n_prompts": 24})
        df = df.merge(ev, on="gamma")
    return df


def test_plot_support_path(tmp_path):
    df = _hand_frame()
    fig = plot_support_path(df)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["attn_out", "mlp_out"]
    assert fig.axes[0].get_xscale() == "symlog"
    png = save_figure(fig, df, "support_path", tmp_path)
    assert png.exists() and (tmp_path / "support_path.csv").exists()


@pytest.mark.parametrize("evaluation", [False, True])
def test_plot_surviving_layers(tmp_path, evaluation):
    df = _hand_frame(evaluation)
    fig = plot_surviving_layers(df)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert ("toxic_share" in labels and "ppl" in labels) == evaluation
    assert "n_prompts" not in labels  # counts are not headline metrics
    assert "layer\n(attn_out)" in labels and "layer\n(mlp_out)" in labels
    bottom = next(ax for ax in fig.axes if ax.get_ylabel() == "layer\n(mlp_out)")
    ticks = [t.get_text() for t in bottom.get_xticklabels()]
    assert ticks == ["0\n8/8", "0.01\n8/8", "0.1\n8/8", "1\n2/8"]  # γ = 1 keeps layer 0 only
    save_figure(fig, df, f"surviving_{evaluation}", tmp_path)
    assert (tmp_path / f"surviving_{evaluation}.png").exists()


def test_plots_refuse_bad_frames():
    with pytest.raises(ValueError, match=r"missing: \['support'\]"):
        plot_support_path(_hand_frame().drop(columns="support"))
    with pytest.raises(ValueError, match="missing: rows"):
        plot_surviving_layers(_hand_frame().iloc[:0])
    with pytest.raises(ValueError, match=r"missing: \['ppl'\]"):
        plot_surviving_layers(_hand_frame(), metrics=["ppl"])


def test_metric_spanning_orders_of_magnitude_gets_a_log_axis():
    df = _hand_frame(True)
    df["ppl"] = df["gamma"].map({0.0: 30.0, 0.01: 4500.0, 0.1: 700.0, 1.0: 31.0})
    fig = plot_surviving_layers(df, metrics=["ppl"])
    ppl_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "ppl")
    assert ppl_ax.get_yscale() == "log"
    assert "4,500" in [t.get_text() for t in ppl_ax.texts]


def _overlap_frame() -> pd.DataFrame:
    """aura_lineas_overlap-shaped: 2 layers × 2 points, width 32, k = 3; L0.attn_out is off."""
    rows = [("L0.attn_out", 0, "attn_out", 3, 0, 0, 1.0),
            ("L0.mlp_out", 0, "mlp_out", 3, 3, 1, 0.26),
            ("L1.attn_out", 1, "attn_out", 3, 3, 3, 0.0002),
            ("L1.mlp_out", 1, "mlp_out", 2, 3, 0, 1.0)]
    df = pd.DataFrame([{"site": site, "layer": layer, "point": point, "width": 32, "n_aura": na,
                        "n_lineas": nl, "n_both": both, "jaccard": both / (na + nl - both),
                        "expected_both": na * nl / 32, "p_value": p}
                       for site, layer, point, na, nl, both, p in rows])
    return df[AURA_LINEAS_COLUMNS].assign(gamma=0.01, k=3)


def test_plot_aura_lineas_overlap(tmp_path):
    df = _overlap_frame()
    fig = plot_aura_lineas_overlap(df)
    axes = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in axes] == ["attn_out", "mlp_out"]
    assert "k = 3" in fig._suptitle.get_text() and "γ = 0.01" in fig._suptitle.get_text()
    assert axes[-1].get_xlabel() == "layer" and "top-k sets" in axes[0].get_ylabel()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["units in both top-k sets", "most possible: min(n_AurA, n_LinEAS)"]
    assert "p < 0.05 (more than chance)" in labels and "LinEAS off at this site" in labels
    png = save_figure(fig, df, "aura_lineas", tmp_path)
    assert png.exists() and (tmp_path / "aura_lineas.csv").exists()
    # Without the gamma / k columns (the bare analysis frame) the title has no second line.
    bare = plot_aura_lineas_overlap(df.drop(columns=["gamma", "k"]))
    assert "\n" not in bare._suptitle.get_text()


def test_plot_aura_lineas_overlap_refuses_bad_frames():
    with pytest.raises(ValueError, match=r"aura_lineas_overlap frame .*missing: \['p_value'\]"):
        plot_aura_lineas_overlap(_overlap_frame().drop(columns="p_value"))
    with pytest.raises(ValueError, match="missing: rows"):
        plot_aura_lineas_overlap(_overlap_frame().iloc[:0])
