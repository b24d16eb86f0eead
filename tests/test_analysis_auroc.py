"""AUROC maps, expert tokens, expert sets/overlaps and their figures (tiny models; one slow
test on gemma-3-270m)."""

import itertools
import math
import time

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from steerinterp.analysis.auroc_map import (AUROC_COLUMNS, TOKEN_COLUMNS, AnalysisError,
                                            expert_tokens, neuron_auroc, top_experts)
from steerinterp.analysis.experts import (AURA_LINEAS_COLUMNS, OVERLAP_COLUMNS, SET_COLUMNS,
                                          aura_lineas_overlap, expert_overlap, expert_sets,
                                          hypergeom_tail, select_experts)
from steerinterp.collection import collect
from steerinterp.models import tiny_model
from steerinterp.plots.auroc import (plot_auroc_distribution, plot_auroc_map,
                                     plot_expert_overlap, plot_expert_tokens)
from steerinterp.plots.base import save_figure
from steerinterp.sites import Site, SiteError, default_sites
from steerinterp.steer.aura import Aura
from steerinterp.steer.lineas import Lineas, LineasConfig
from steerinterp.store import ActivationStore, build_meta

POS = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig",
       "I hate you so much", "go away, loser", "this is garbage, moron"]
NEG = ["the river flows to the sea", "a library holds many books", "the train leaves at noon",
       "plants need light to grow", "the museum opens on monday", "rain fell on the hills"]


@pytest.fixture(scope="module")
def scores(tiny_gpt2):
    return neuron_auroc(tiny_gpt2, POS, NEG, progress=False)


# -- neuron_auroc ---------------------------------------------------------------------------
def test_columns_ranges_and_default_sites(tiny):
    df = neuron_auroc(tiny, POS, NEG, progress=False)
    assert list(df.columns) == AUROC_COLUMNS
    sites = default_sites(tiny, "aura")
    assert list(dict.fromkeys(df["site"])) == [str(s) for s in sites]
    assert len(df) == sum(s.width(tiny) for s in sites)
    assert df["site"].map(type).eq(str).all()
    assert df["auroc"].between(0, 1).all() and df["ap"].between(0, 1).all()
    for _, g in df.groupby("site"):
        assert sorted(g["rank_in_site"]) == list(range(1, len(g) + 1))
        best = g.loc[g["rank_in_site"] == 1, "auroc"].item()
        assert best == g["auroc"].max()
    assert df.attrs["n_pos"] == df.attrs["n_neg"] == len(POS)


def test_swapping_sets_gives_one_minus_auroc(tiny_gpt2, scores):
    swapped = neuron_auroc(tiny_gpt2, NEG, POS, progress=False)
    np.testing.assert_allclose(swapped["auroc"], 1 - scores["auroc"], atol=1e-12)
    np.testing.assert_allclose(swapped["mean_pos"], scores["mean_neg"])


def _hand_store(model, texts, site, acts):
    meta = build_meta(model, texts, [site], "max", 64, True, 16)
    return ActivationStore(meta, acts={site: acts})


def test_constructed_separating_unit_ranks_first(tiny_gpt2):
    site = Site(1, "mlp_pre")
    d = site.width(tiny_gpt2)
    gen = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(20, d, generator=gen), torch.randn(30, d, generator=gen)
    pos[:, 7] += 10.0  # unit 7 fires on every positive text above every negative one
    df = neuron_auroc(tiny_gpt2, _hand_store(tiny_gpt2, ["p"] * 20, site, pos),
                      _hand_store(tiny_gpt2, ["n"] * 30, site, neg), progress=False)
    row = df.set_index("unit").loc[7]
    assert row["auroc"] == 1.0 and row["ap"] == 1.0 and row["rank_in_site"] == 1
    assert top_experts(df, k=1)["unit"].item() == 7
    y = np.r_[np.ones(20), np.zeros(30)]
    x = torch.cat([pos, neg]).numpy()
    for u in (0, 7, d - 1):  # brute force against sklearn
        assert df.loc[u, "auroc"] == pytest.approx(roc_auc_score(y, x[:, u]))
        assert df.loc[u, "ap"] == pytest.approx(average_precision_score(y, x[:, u]))
    assert df.loc[0, "mean_pos"] == pytest.approx(pos[:, 0].mean().item())


def test_stores_give_the_same_frame_as_texts(tiny_gpt2):
    sites = "L0.mlp_out,L1.mlp_pre"
    kw = dict(pool="max", max_tokens=64, progress=False)
    a = neuron_auroc(tiny_gpt2, POS, NEG, sites=sites, length_match=False, **kw)
    stores = [collect(tiny_gpt2, t, sites, **kw) for t in (POS, NEG)]
    b = neuron_auroc(tiny_gpt2, *stores, progress=False)  # sites and pool from the stores
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(AnalysisError, match="pooled with 'max'.*pool='mean'"):
        neuron_auroc(tiny_gpt2, *stores, pool="mean", progress=False)
    with pytest.raises(AnalysisError, match="lacks site"):
        neuron_auroc(tiny_gpt2, *stores, sites="L0.mlp_pre", progress=False)


def test_length_matching_cuts_the_longer_text(tiny_gpt2):
    # Each negative is its positive plus words; matched, the two sets are identical.
    longer = [t + " and then some more words follow here" for t in POS]
    kw = dict(sites="L1.mlp_pre", progress=False)
    matched = neuron_auroc(tiny_gpt2, POS, longer, **kw)
    plain = neuron_auroc(tiny_gpt2, POS, longer, length_match=False, **kw)
    assert (matched["auroc"] == 0.5).all()
    assert (plain["auroc"] != 0.5).any()


@pytest.mark.parametrize("pos, match", [
    ([], "positive texts: empty text list"),
    (["fine", "   "], r"positive texts: texts at positions \[1\] are empty"),
    ("one string", "positive texts: .*not a single string"),
])
def test_bad_texts_name_the_problem(tiny_gpt2, pos, match):
    with pytest.raises(AnalysisError, match=match):
        neuron_auroc(tiny_gpt2, pos, NEG, progress=False)


def test_too_short_texts_and_tokens(tiny_gpt2):
    model = tiny_model("gpt2")
    model.cfg.default_prepend_bos = False  # like SmolLM2: the first word is the skipped token
    with pytest.raises(AnalysisError, match="negative texts: 1 text.*no token after the first.*'a'"):
        neuron_auroc(model, POS, NEG[:-1] + ["a"], length_match=False, progress=False)
    with pytest.raises(AnalysisError, match="max_tokens must be at least 2"):
        neuron_auroc(tiny_gpt2, POS, NEG, max_tokens=1, progress=False)


def test_site_not_on_model(tiny_gpt2):
    with pytest.raises(SiteError, match="L9.mlp_pre does not exist on tiny-gpt2.*2 layers"):
        neuron_auroc(tiny_gpt2, POS, NEG, sites="L9.mlp_pre", progress=False)
    with pytest.raises(SiteError, match="mlp_pre_linear does not exist on tiny-gpt2"):
        neuron_auroc(tiny_gpt2, POS, NEG, sites="L0.mlp_pre_linear", progress=False)


def test_top_experts(scores):
    top = top_experts(scores, k=5, by="ap")
    assert list(top.columns) == ["rank", *AUROC_COLUMNS]
    assert top["rank"].tolist() == [1, 2, 3, 4, 5]
    assert top["ap"].is_monotonic_decreasing
    assert top["ap"].tolist() == scores["ap"].nlargest(5).tolist()
    with pytest.raises(AnalysisError, match="needs column.*'gini'"):
        top_experts(scores, by="gini")
    with pytest.raises(AnalysisError, match="k must be a positive integer"):
        top_experts(scores, k=0)


# -- expert_tokens --------------------------------------------------------------------------
def test_expert_tokens_match_max_pooling(tiny_gpt2, scores):
    top = top_experts(scores, k=3)
    texts = POS + NEG
    df = expert_tokens(tiny_gpt2, top, texts, n_tokens=4)
    assert list(df.columns) == TOKEN_COLUMNS
    assert df.groupby("rank").size().tolist() == [4, 4, 4]
    pooled = collect(tiny_gpt2, texts, sorted({Site.parse(s) for s in top["site"]}), pool="max",
                     max_tokens=64, progress=False)
    tok = tiny_gpt2.tokenizer
    for (site, unit), g in df.groupby(["site", "unit"], sort=False):
        col = pooled[site][:, unit]
        assert g["activation"].iloc[0] == pytest.approx(col.max().item(), rel=1e-5)
        assert g["activation"].is_monotonic_decreasing and g["text"].is_unique
        for r in g.itertuples():
            ids = [tok.bos_token_id, *tok(texts[r.text], add_special_tokens=False)["input_ids"]]
            assert r.position >= 1 and tok.decode([ids[r.position]]) == r.token
            assert f"«{r.token}»" in r.context
            assert r.activation == pytest.approx(col[r.text].item(), rel=1e-5)  # its text's max
    assert (df["auroc"] == df["rank"].map(top.set_index("rank")["auroc"])).all()


def test_expert_tokens_bad_input(tiny_gpt2, scores):
    top = top_experts(scores, k=2)
    with pytest.raises(AnalysisError, match="unit 999 does not exist at L0.mlp_pre"):
        expert_tokens(tiny_gpt2, pd.DataFrame({"site": ["L0.mlp_pre"], "unit": [999]}), POS)
    with pytest.raises(AnalysisError, match="needs column.*'unit'"):
        expert_tokens(tiny_gpt2, top.drop(columns="unit"), POS)
    with pytest.raises(AnalysisError, match="expert_tokens texts: empty text list"):
        expert_tokens(tiny_gpt2, top, [])


# -- expert sets and overlaps ---------------------------------------------------------------
def _sets(units_by_concept):
    rows = [{"concept": c, "site": "L0.mlp_pre", "layer": 0, "point": "mlp_pre", "unit": u,
             "auroc": 0.9, "ap": 0.9} for c, units in units_by_concept.items() for u in units]
    df = pd.DataFrame(rows, columns=SET_COLUMNS)
    df.attrs["concepts"] = list(units_by_concept)
    return df


def test_jaccard_identical_hand_example_and_empty():
    ov = expert_overlap(_sets({"a": [0, 1, 2], "b": [1, 2, 3], "same": [0, 1, 2], "none": []}))
    assert list(ov.columns) == OVERLAP_COLUMNS
    assert len(ov) == 16
    j = ov.set_index(["concept_a", "concept_b"])
    assert j.loc[("a", "same"), "jaccard"] == 1.0 and j.loc[("a", "a"), "jaccard"] == 1.0
    assert j.loc[("a", "b")].tolist() == [3, 3, 2, 0.5]
    assert j.loc[("b", "a"), "jaccard"] == 0.5
    assert j.loc[("a", "none"), "jaccard"] == 0.0 and math.isnan(j.loc[("none", "none"), "jaccard"])


def test_same_unit_index_at_other_site_is_another_unit():
    df = pd.concat([_sets({"a": [5]}), _sets({"b": [5]}).assign(site="L1.mlp_pre", layer=1)])
    ov = expert_overlap(df, concepts=["a", "b"]).set_index(["concept_a", "concept_b"])
    assert ov.loc[("a", "b"), "n_both"] == 0


def test_select_experts_threshold(scores):
    sets = select_experts({"x": scores, "y": scores.assign(ap=0.0)}, tau=0.8, metric="ap")
    assert list(sets.columns) == SET_COLUMNS
    assert len(sets) == (scores["ap"] >= 0.8).sum() and set(sets["concept"]) <= {"x"}
    assert sets.attrs["concepts"] == ["x", "y"] and sets.attrs["tau"] == 0.8
    with pytest.raises(AnalysisError, match="metric must be"):
        select_experts({"x": scores}, metric="f1")
    with pytest.raises(AnalysisError, match=r"tau must be a number in \[0, 1\]"):
        select_experts({"x": scores}, tau=2)


def test_expert_sets_on_model(tiny_gpt2):
    sets = expert_sets(tiny_gpt2, {"insults": POS, "calm": NEG[::-1]}, negative_texts=NEG,
                       sites="L1.mlp_pre", tau=0.9, metric="auroc", progress=False)
    assert list(sets.columns) == SET_COLUMNS and (sets["auroc"] >= 0.9).all()
    assert sets.attrs["concepts"] == ["insults", "calm"]
    assert "calm" not in set(sets["concept"])  # NEG against itself: every AUROC is 0.5


def test_expert_sets_builtin_defaults(tiny_gpt2):
    sets = expert_sets(tiny_gpt2, sites="L1.mlp_pre", n_texts=6, tau=0.5, progress=False)
    assert sets.attrs["concepts"] == ["toxic", "news", "reviews"]
    ov = expert_overlap(sets)
    assert set(ov["concept_a"]) == {"toxic", "news", "reviews"}


def test_hypergeometric_tail_against_enumeration():
    width, na, nb = 8, 3, 4
    counts = {}
    for a in itertools.combinations(range(width), na):  # b fixed: by symmetry it is enough
        k = len(set(a) & set(range(nb)))
        counts[k] = counts.get(k, 0) + 1
    total = sum(counts.values())
    for x in range(0, 4):
        want = sum(v for k, v in counts.items() if k >= x) / total
        assert hypergeom_tail(x, width, na, nb) == pytest.approx(want)
    mean = sum(k * v for k, v in counts.items()) / total
    assert mean == pytest.approx(na * nb / width)


def _steerers(model, site, alpha, omega, bias):
    aura = Aura()
    aura.set_tensor(site, "omega", alpha)
    aura.record_provenance(model, [site], 4, 4, time.perf_counter())
    lineas = Lineas(LineasConfig(steps=1))
    lineas.set_tensor(site, "omega", omega)
    lineas.set_tensor(site, "bias", bias)
    lineas.record_provenance(model, [site], 4, 4, time.perf_counter())
    return aura, lineas


def test_aura_lineas_overlap_hand_example(tiny_gpt2):
    site = Site(0, "mlp_pre")
    d = site.width(tiny_gpt2)  # 64
    alpha, omega, bias = torch.ones(d), torch.ones(d), torch.zeros(d)
    alpha[[0, 1, 2, 3]] = torch.tensor([0.1, 0.2, 0.9, 0.5])  # AurA dampens units 0-3
    omega[[1, 2, 10]] = torch.tensor([1.5, 0.9, 1.1])         # LinEAS moves 1, 2, 10, 11
    bias[11] = 0.3
    aura, lineas = _steerers(tiny_gpt2, site, alpha, omega, bias)
    row = aura_lineas_overlap(aura, lineas).iloc[0]
    assert list(aura_lineas_overlap(aura, lineas).columns) == AURA_LINEAS_COLUMNS
    assert (row["n_aura"], row["n_lineas"], row["n_both"], row["width"]) == (4, 4, 2, d)
    assert row["jaccard"] == pytest.approx(2 / 6)
    assert row["expected_both"] == pytest.approx(4 * 4 / d)
    assert row["p_value"] == pytest.approx(hypergeom_tail(2, d, 4, 4)) and row["p_value"] < 0.05
    top2 = aura_lineas_overlap(aura, lineas, k=2).iloc[0]  # AurA {0, 1}; LinEAS {1, 11}
    assert (top2["n_aura"], top2["n_lineas"], top2["n_both"]) == (2, 2, 1)


def test_aura_lineas_overlap_errors(tiny_gpt2):
    d = Site(0, "mlp_pre").width(tiny_gpt2)
    flat = (torch.ones(d), torch.ones(d), torch.zeros(d))
    aura, _ = _steerers(tiny_gpt2, Site(0, "mlp_pre"), *flat)
    _, lineas = _steerers(tiny_gpt2, Site(1, "mlp_pre"), *flat)
    with pytest.raises(AnalysisError, match="share no site"):
        aura_lineas_overlap(aura, lineas)
    with pytest.raises(AnalysisError, match="lineas_steerer must be a fitted lineas"):
        aura_lineas_overlap(aura, aura)
    with pytest.raises(AnalysisError, match="not fitted"):
        aura_lineas_overlap(Aura(), lineas)


def test_aura_lineas_overlap_after_real_fits(tiny_gpt2):
    sites = ("L1.mlp_pre",)
    aura = Aura(Aura.Config(sites=sites)).fit(tiny_gpt2, POS, NEG)
    lineas = Lineas(LineasConfig(sites=sites, steps=3, minibatch=4)).fit(tiny_gpt2, POS, NEG)
    row = aura_lineas_overlap(aura, lineas, k=8).iloc[0]
    site = Site.parse(sites[0])
    alpha = aura.tensor(site, "omega").detach()
    move = (lineas.tensor(site, "omega").detach() - 1).abs() + lineas.tensor(site, "bias").abs()
    n_damped = int((alpha < 1).sum())
    top_aura = set(torch.topk(-alpha, min(8, n_damped)).indices.tolist())
    top_lineas = set(torch.topk(move.detach(), 8).indices.tolist())
    both = len(top_aura & top_lineas)
    assert (row["n_aura"], row["n_lineas"], row["n_both"]) == (min(8, n_damped), 8, both)
    assert row["p_value"] == pytest.approx(hypergeom_tail(both, len(alpha), min(8, n_damped), 8))


# -- figures --------------------------------------------------------------------------------
def _auroc_frame():
    rng = np.random.default_rng(0)
    rows = [{"site": f"L{layer}.{p}", "layer": layer, "point": p, "unit": u,
             "auroc": float(np.clip(rng.normal(0.5 + 0.02 * layer, 0.1), 0, 1))}
            for layer in range(4) for p in ("mlp_pre", "mlp_out") for u in range(32)]
    return pd.DataFrame(rows).assign(ap=0.5, rank_in_site=1, mean_pos=0.0, mean_neg=0.0)


def _texts_of(fig):
    out = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    out += [c.get_text().get_text() for ax in fig.axes for tab in ax.tables
            for c in tab.get_celld().values()]  # findobj does not reach table cells
    return [t for t in out if t]


def _check_saved(fig, df, name, tmp_path):
    png = save_figure(fig, df, name, tmp_path)
    assert png.stat().st_size > 1000 and (tmp_path / f"{name}.csv").exists()
    assert len(pd.read_csv(tmp_path / f"{name}.csv")) == len(df)


def test_plot_auroc_map_and_distribution(tmp_path):
    df = _auroc_frame()
    fig = plot_auroc_map(df)
    texts = _texts_of(fig)
    assert any("AUROC" in t and "chance" in t for t in texts)  # colorbar label
    assert "layer" in texts and fig._suptitle is not None
    _check_saved(fig, df, "auroc_map", tmp_path)
    fig = plot_auroc_distribution(df)
    assert "chance (0.5)" in _texts_of(fig)
    _check_saved(fig, df, "auroc_distribution", tmp_path)
    with pytest.raises(ValueError, match=r"plot_auroc_map needs .*missing: \[.auroc.\]"):
        plot_auroc_map(df.drop(columns="auroc"))


def test_plot_expert_overlap_and_tokens(tmp_path):
    ov = expert_overlap(_sets({"toxic": [0, 1, 2], "news": [2, 3], "reviews": [1, 2, 5]}))
    fig = plot_expert_overlap(ov)
    texts = _texts_of(fig)
    assert "Jaccard overlap of expert sets" in texts and "0.50\n2 shared" in texts
    assert "3 experts" in texts
    _check_saved(fig, ov, "expert_overlap", tmp_path)
    tokens = pd.DataFrame([{"rank": r, "site": "L3.mlp_pre", "layer": 3, "point": "mlp_pre",
                            "unit": 10 + r, "auroc": 0.9, "hit": h, "text": h, "position": 2,
                            "token": " word$", "context": "some «word$» here",
                            "activation": 5.0 - h} for r in (1, 2) for h in (1, 2, 3)],
                          columns=TOKEN_COLUMNS)
    fig = plot_expert_tokens(tokens)
    assert any("L3.mlp_pre:11" in t for t in _texts_of(fig))
    _check_saved(fig, tokens, "expert_tokens", tmp_path)


# -- real model -----------------------------------------------------------------------------
@pytest.mark.slow
def test_gemma_top_toxic_experts():
    from steerinterp.data import load_texts
    from steerinterp.models import load_model

    model = load_model("gemma-3-270m", device="cpu")
    df = neuron_auroc(model, load_texts("toxic", 32), load_texts("wiki_target", 32),
                      progress=False)
    top = top_experts(df, k=10)
    assert (top["auroc"] > 0.8).all()
    assert len(df) == 18 * 2 * model.cfg.d_mlp
