"""analysis/token_scales.py and plots/token_scales.py: DSAS per-token gates on a tiny model."""

import numpy as np
import pandas as pd
import pytest

from typecheck import checks_off
from steerinterp.analysis.token_scales import (GROUP_COLUMNS, TOKEN_COLUMNS, mean_scale_by_site,
                                               summarise_scales, token_scales)
from steerinterp.models import tiny_model
from steerinterp.plots.base import save_figure
from steerinterp.plots.token_scales import (plot_scale_by_site, plot_token_heatmap, readable,
                                            token_scales_html)
from steerinterp.steer import make
from steerinterp.store import StoreError

SOURCE = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig",
          "I hate you so much", "go away, loser", "this is garbage, moron"]
TARGET = ["the river flows to the sea", "a library holds many books", "the train leaves at noon",
          "plants need light to grow", "the museum opens on monday", "rain fell on the hills"]
CONTROL = ["the meeting starts at ten", "he painted the fence blue", "cats sleep a lot",
           "the bus was late again", "she plays the violin", "bread is baked daily"]
TEXTS = ["you are such an idiot", "a", "the weather today is mild and the\nsky is clear"]


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2", seed=1)


@pytest.fixture(scope="module")
def base(model):
    return make("mean_shift").fit(model, SOURCE, TARGET)


@pytest.fixture(scope="module")
def dsas(model, base):
    return make("dsas", base=base, threshold=0.0).fit(model, SOURCE, control=CONTROL)


@pytest.fixture(scope="module")
def frame(model, dsas):
    return token_scales(model, dsas, TEXTS, batch_size=2)


def test_columns_rows_and_ranges(model, dsas, frame):
    assert list(frame.columns) == TOKEN_COLUMNS
    assert frame["scale"].between(0, 1).all()
    n_tokens = [len(model.to_str_tokens(t)) for t in TEXTS]  # BOS included, no padding
    assert len(frame) == sum(n_tokens) * len(dsas.sites)
    for i, t in enumerate(TEXTS):
        sub = frame[(frame["text_id"] == i) & (frame["site"] == str(dsas.sites[0]))]
        assert list(sub["position"]) == list(range(n_tokens[i]))
        assert list(sub["token"]) == model.to_str_tokens(t)
    assert (frame["is_first"] == (frame["position"] == 0)).all()
    assert set(frame["site"]) == {str(s) for s in dsas.sites}
    assert (frame["layer"] == frame["site"].str.extract(r"L(\d+)")[0].astype(int)).all()


def test_the_same_gates_whatever_the_batching(model, dsas, frame):
    for batch_size in (1, 2):  # left padding must not move a gate
        again = token_scales(model, dsas, TEXTS, batch_size=batch_size)
        pd.testing.assert_frame_equal(again, frame, atol=1e-6)


def test_max_tokens_and_site_filter(model, dsas):
    df = token_scales(model, dsas, TEXTS, max_tokens=4, sites=[str(dsas.sites[1])])
    assert df["position"].max() == 3 and set(df["site"]) == {str(dsas.sites[1])}


def test_bad_inputs(model, dsas, base):
    with pytest.raises(TypeError, match="reads DSAS gates; got a MeanShift"), checks_off():
        token_scales(model, base, TEXTS)
    with pytest.raises(ValueError, match=r"site\(s\) L1\.resid_post are not steered by the dsas "
                                         r"steerer; its sites: L0\.ln1, L0\.ln2"):
        token_scales(model, dsas, TEXTS, sites=["L1.resid_post"])
    with pytest.raises(ValueError, match="max_tokens must be at least 2"):
        token_scales(model, dsas, TEXTS, max_tokens=1)
    with pytest.raises(StoreError, match="empty or whitespace-only"):
        token_scales(model, dsas, ["fine", ""])
    with pytest.raises(ValueError, match="batch_size"):
        token_scales(model, dsas, TEXTS, batch_size=0)
    with pytest.raises(ValueError, match="texts_by_group"):
        mean_scale_by_site(model, dsas, {})


def test_text_without_tokens_after_the_first():
    model = tiny_model("gpt2", seed=2)
    model.cfg.default_prepend_bos = False  # like SmolLM2: the first word is the first token
    dsas = make("dsas", target_as_control=True, threshold=0.0).fit(model, SOURCE, TARGET)
    with pytest.raises(ValueError, match=r"1 text\(s\) have no token after the first .*#1: 'a'"):
        token_scales(model, dsas, ["ok then", "a"])


def test_mean_scale_by_site(model, dsas):
    groups = {"toxic": SOURCE[:3], "neutral": CONTROL[:3]}
    df = mean_scale_by_site(model, dsas, groups)
    assert list(df.columns) == GROUP_COLUMNS
    assert list(df["group"].unique()) == ["toxic", "neutral"]
    assert len(df) == 2 * len(dsas.sites) and df["active"].all()
    assert df["mean_scale"].between(0, 1).all() and (df["se"] >= 0).all()
    n_tok = sum(len(model.to_str_tokens(t)) - 1 for t in SOURCE[:3])  # first token left out
    assert (df.loc[df["group"] == "toxic", "n_tokens"] == n_tok).all()
    assert (df["n_texts"] == 3).all()


def test_summarise_scales_closed_form():
    df = pd.DataFrame({"group": "g", "text_id": [0, 0, 0, 1, 1], "position": [0, 1, 2, 0, 1],
                       "is_first": [True, False, False, True, False], "site": "L0.mlp_out",
                       "layer": 0, "point": "mlp_out", "scale": [0.9, 0.2, 0.4, 0.9, 0.6]})
    out = summarise_scales(df, active={"L0.mlp_out": False}).iloc[0]
    assert out["mean_scale"] == pytest.approx((0.3 + 0.6) / 2)
    assert out["se"] == pytest.approx(np.std([0.3, 0.6], ddof=1) / np.sqrt(2))
    assert out["n_tokens"] == 3 and out["n_texts"] == 2 and not out["active"]
    assert summarise_scales(df, include_first=True).iloc[0]["n_tokens"] == 5
    with pytest.raises(ValueError, match=r"needs columns \['group'\]"):
        summarise_scales(df.drop(columns="group"))


# -- plots -------------------------------------------------------------------------------------
def _hand_tokens() -> pd.DataFrame:
    rows = []
    for text_id, tokens in enumerate([["<bos>", "you", " idiot", "\n"], ["<bos>", "hi"]]):
        for layer in range(3):
            for pos, tok in enumerate(tokens):
                rows.append({"text_id": text_id, "position": pos, "token": tok,
                             "is_first": pos == 0, "site": f"L{layer}.mlp_out", "layer": layer,
                             "point": "mlp_out", "scale": (pos + layer) / 6})
    return pd.DataFrame(rows)


def _hand_groups() -> pd.DataFrame:
    rows = [{"group": g, "site": f"L{layer}.{p}", "layer": layer, "point": p,
             "active": layer != 1, "mean_scale": m * (layer + 1) / 4, "se": 0.05,
             "n_texts": 4, "n_tokens": 40}
            for g, m in (("toxic", 0.9), ("neutral", 0.3)) for layer in range(3)
            for p in ("attn_out", "mlp_out")]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("text_id", [0, [0, 1]])
def test_plot_token_heatmap(tmp_path, text_id):
    df = _hand_tokens()
    fig = plot_token_heatmap(df, text_id)
    first = fig.axes[0]
    assert [t.get_text() for t in first.get_xticklabels()] == ["<bos>", "you", "·idiot", "\\n"]
    assert [t.get_text() for t in first.get_yticklabels()] == ["L0.mlp_out", "L1.mlp_out",
                                                               "L2.mlp_out"]
    assert save_figure(fig, df, "heat", tmp_path).exists()


def test_plot_scale_by_site(tmp_path):
    df = _hand_groups()
    fig = plot_scale_by_site(df)
    assert [ax.get_title() for ax in fig.axes] == ["attn_out", "mlp_out"]
    legend = fig.axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["toxic", "neutral"]
    assert save_figure(fig, df, "by_site", tmp_path).exists()


def test_html_views():
    df = _hand_tokens()
    multi = token_scales_html(df, 0)
    assert "ColoredTokensMulti" in str(multi) and "L2.mlp_out" in str(multi)
    single = token_scales_html(df, 1, site="L1.mlp_out")
    assert "ColoredTokens" in str(single) and "hi" in str(single)
    with pytest.raises(ValueError, match=r"text_id \[7\] not in the frame"):
        token_scales_html(df, 7)
    with pytest.raises(ValueError, match="site L9.mlp_out is not in the frame"):
        token_scales_html(df, 0, site="L9.mlp_out")


def test_plots_refuse_bad_frames():
    with pytest.raises(ValueError, match=r"missing: \['scale'\]"):
        plot_token_heatmap(_hand_tokens().drop(columns="scale"), 0)
    with pytest.raises(ValueError, match=r"text_id \[5\] not in the frame"):
        plot_token_heatmap(_hand_tokens(), [0, 5])
    with pytest.raises(ValueError, match=r"missing: \['se'\]"):
        plot_scale_by_site(_hand_groups().drop(columns="se"))


def test_readable():
    assert readable(" a\tb\n") == "·a\\tb\\n" and readable("x" * 20) == "x" * 13 + "…"
