"""analysis/sae_overlap.py, analysis/sae_train.py and plots/sae.py on a tiny model.

The overlap tests use a hand-built SAELens SAE with orthonormal decoder rows and a mean-shift
steerer whose bias lies along one decoder row, so the answers are known in closed form.
"""

import json

import numpy as np
import pandas as pd
import pytest
import sae_lens
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from steerinterp.analysis import sae_train
from steerinterp.analysis.sae_overlap import (ALIGN_COLUMNS, CHANGE_COLUMNS, OVERLAP_COLUMNS,
                                              TOKEN_COLUMNS, change_frame, encode,
                                              feature_changes, feature_labels,
                                              feature_set_overlap, feature_top_tokens,
                                              sae_overlap, shift_alignment, site_pair, text_ids)
from steerinterp.analysis.sae_train import MARKER, train_sae
from steerinterp.collection import collect
from steerinterp.models import tiny_model
from steerinterp.plots.base import save_figure
from steerinterp.plots.sae import plot_feature_changes, plot_feature_overlap, plot_shift_alignment
from steerinterp.sites import Site, SiteError
from steerinterp.steer import make

SRC = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig", "I hate you"]
TGT = ["the river flows to the sea", "a library holds many books", "plants need light",
       "rain fell on the hills"]
SITE = Site(1, "mlp_out")
J, K = 5, 9  # the features the two test steerers push down


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2", seed=1)


def make_sae(d_in=32, d_sae=16, hook=SITE.hook_name, seed=0):
    """Orthonormal decoder rows, encoder = decoder transpose, and a large encoder bias so
    every feature is active: feature j reads ``<x, d_j> + 5``."""
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook))
    sae = StandardSAE(cfg)
    q, _ = torch.linalg.qr(torch.randn(d_in, d_sae, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q)
        sae.b_enc.fill_(5.0)
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def sae():
    return make_sae()


def shifted(model, sae, feature, scale=-3.0):
    """A mean shift at SITE whose bias is ``scale`` times decoder row ``feature``."""
    steerer = make("mean_shift", sites=[str(SITE)]).fit(model, SRC, TGT)
    steerer.set_tensor(SITE, "bias", scale * sae.W_dec[feature].detach())
    return steerer


@pytest.fixture(scope="module")
def steerer(model, sae):
    return shifted(model, sae, J)


def test_site_pair_reads_the_maps_input_and_output(model, steerer):
    ids = text_ids(model, SRC, 64)
    z_in, z_out = site_pair(model, steerer, SITE, ids, batch_size=3)
    clean = collect(model, SRC, [SITE], pool="none", progress=False)[SITE]
    torch.testing.assert_close(z_in, clean)  # only SITE is steered: its input is the clean act
    torch.testing.assert_close(z_out, steerer.steer(z_in, SITE))
    assert z_in.shape[0] == sum(len(x) - 1 for x in ids)


def test_alignment_ranks_the_constructed_feature_first(model, steerer, sae):
    df = shift_alignment(model, steerer, sae, SRC)
    assert list(df.columns) == ALIGN_COLUMNS and len(df) == 16
    assert list(df["rank"]) == list(range(1, 17)) and (df["site"] == str(SITE)).all()
    top = df.iloc[0]
    assert top["feature"] == J and top["cosine"] == pytest.approx(-1.0, abs=1e-5)
    assert df["abs_cosine"].iloc[1:].max() < 1e-5
    assert top["shift_norm"] == pytest.approx(3.0, rel=1e-5) and top["d_in"] == 32
    half = shift_alignment(model, steerer, sae, SRC, strength=0.5)
    assert half["shift_norm"].iloc[0] == pytest.approx(1.5, rel=1e-5)


def test_feature_changes_find_the_suppressed_feature(model, steerer, sae):
    df = feature_changes(model, steerer, sae, SRC, TGT)
    assert list(df.columns) == CHANGE_COLUMNS and len(df) == 32
    assert list(df["text_set"].unique()) == ["source", "target"]
    np.testing.assert_allclose(df["change"], df["mean_steered"] - df["mean_unsteered"])
    for _, sub in df.groupby("text_set"):
        assert sub.iloc[0]["feature"] == J and sub.iloc[0]["rank"] == 1
        assert sub.iloc[0]["change"] == pytest.approx(-3.0, abs=1e-4)
        assert sub["change"].iloc[1:].abs().max() < 1e-4
        assert sorted(sub["rank"]) == list(range(1, 17))


def test_feature_set_overlap_is_jaccard():
    def frame(drops, site="L1.mlp_out"):
        after = torch.zeros(8)
        after[drops] = -torch.arange(1.0, len(drops) + 1)
        return change_frame(torch.zeros(8), after, site, "source")

    df = feature_set_overlap({"a": frame([0, 1, 2]), "b": frame([1, 2, 3]), "c": frame([])}, k=3)
    assert list(df.columns) == OVERLAP_COLUMNS and len(df) == 9
    cell = df.set_index(["method_a", "method_b"])
    assert cell.loc[("a", "b"), "jaccard"] == 0.5 and cell.loc[("a", "b"), "n_both"] == 2
    assert cell.loc[("a", "a"), "jaccard"] == 1.0 and cell.loc[("a", "c"), "jaccard"] == 0.0
    assert np.isnan(cell.loc[("c", "c"), "jaccard"]) and cell.loc[("c", "c"), "n_a"] == 0
    # k=1 keeps the most suppressed feature only (2 in a, 3 in b).
    assert feature_set_overlap({"a": frame([0, 1, 2]), "b": frame([1, 2, 3])}, k=1)[
        "jaccard"].tolist() == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="several sites"):
        feature_set_overlap({"a": frame([0]), "b": frame([0], site="L0.mlp_out")})
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['rank'\]"):
        feature_set_overlap({"a": frame([0]).drop(columns="rank")})
    with pytest.raises(ValueError, match="k must be a positive integer"):
        feature_set_overlap({"a": frame([0])}, k=0)
    with pytest.raises(ValueError, match="non-empty dict"):
        feature_set_overlap({})


def test_feature_top_tokens(model, sae):
    texts = SRC + TGT
    df = feature_top_tokens(model, sae, [J, 0], texts, n=3)
    assert list(df.columns) == TOKEN_COLUMNS and list(df["feature"].unique()) == [J, 0]
    acts = encode(sae, model, collect(model, texts, [SITE], pool="none", progress=False)[SITE])
    for feature, sub in df.groupby("feature"):
        assert list(sub["rank"]) == [1, 2, 3] and sub["text_id"].is_unique  # one per text
        assert (np.diff(sub["activation"]) <= 0).all()
        assert sub["activation"].iloc[0] == pytest.approx(float(acts[:, feature].max()))
    every = feature_top_tokens(model, sae, [J], texts[:1], n=4, one_per_text=False)
    assert len(every) == 4 and (every["text_id"] == 0).all() and every["position"].is_unique
    ids = text_ids(model, texts, 64)
    for row in df.itertuples():
        assert row.position >= 1
        assert row.token == model.tokenizer.decode([ids[row.text_id][row.position]])
        assert f"«{row.token}»" in row.context
    labels = feature_labels(df)
    assert set(labels) == {J, 0} and labels[J].startswith(f"f{J} · ")


def test_sae_overlap_entry_point(model, sae, steerer):
    other = shifted(model, sae, K)
    out = sae_overlap(model, {"j": steerer, "k": other}, sae, SRC, TGT, k=2, n_tokens=2)
    assert list(out.alignment.columns) == ["method", *ALIGN_COLUMNS]
    assert list(out.changes.columns) == ["method", *CHANGE_COLUMNS]
    assert list(out.overlap.columns) == OVERLAP_COLUMNS
    assert list(out.top_tokens.columns) == TOKEN_COLUMNS
    first = out.alignment[out.alignment["rank"] == 1].set_index("method")["feature"]
    assert first.to_dict() == {"j": J, "k": K}
    assert {J, K} <= set(out.top_tokens["feature"])
    assert (out.overlap.set_index(["method_a", "method_b"]).loc[("j", "k"), "jaccard"] < 1)
    single = sae_overlap(model, steerer, sae, SRC, TGT, k=2, n_tokens=1, token_texts=TGT[:1])
    assert set(single.alignment["method"]) == {"mean_shift"}
    assert set(single.top_tokens["text_id"]) == {0} and len(single.top_tokens) > 2


def test_bad_inputs(model, sae, steerer, monkeypatch):
    with pytest.raises(ValueError, match=r"trained at hook 'blocks\.0\.hook_mlp_out', but the "
                                         r"site is L1\.mlp_out \('blocks\.1\.hook_mlp_out'\)"):
        shift_alignment(model, steerer, make_sae(hook="blocks.0.hook_mlp_out"), SRC, site=SITE)
    with pytest.raises(ValueError, match=r"SAE has d_in 16, but site L1\.mlp_out has width 32"):
        shift_alignment(model, steerer, make_sae(d_in=16, d_sae=8, hook=None), SRC, site=SITE)
    with pytest.raises(ValueError, match=r"L0\.mlp_out are not steered by the mean_shift "
                                         r"steerer; its sites: L1\.mlp_out"):
        feature_changes(model, steerer, make_sae(hook="blocks.0.hook_mlp_out"), SRC, TGT)
    with pytest.raises(ValueError, match="records no hook; pass site="):
        shift_alignment(model, steerer, make_sae(hook=None), SRC)
    with pytest.raises(TypeError, match="expected a sae_lens SAE"):
        shift_alignment(model, steerer, "sae.pt", SRC)
    with pytest.raises(ValueError, match=r"steering shift at L1\.mlp_out is zero"):
        shift_alignment(model, steerer, sae, SRC, strength=0.0)
    with pytest.raises(ValueError, match=r"features must be indices in \[0, 16\); got \[16\]"):
        feature_top_tokens(model, sae, [3, 16], SRC)
    with pytest.raises(ValueError, match="max_tokens must be at least 2"):
        shift_alignment(model, steerer, sae, SRC, max_tokens=1)
    with pytest.raises(ValueError, match="steerers must be a fitted Steerer or a non-empty"):
        sae_overlap(model, {}, sae, SRC, TGT)
    monkeypatch.setattr(model.cfg, "default_prepend_bos", False)  # then "a" is one token
    with pytest.raises(ValueError, match=r"1 text\(s\) have no token after the first .*'a'"):
        feature_changes(model, steerer, sae, SRC, ["a", *TGT])


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("sae-cache")
    return root, train_sae(model, SITE, "quick", cache_dir=root, progress=False)


class FakeRunner:
    """Stands in for SAELens' runner: saves an untrained SAE where the real one would."""

    calls = 0

    def __init__(self, cfg, override_dataset=None, override_model=None):
        assert override_model is not None and list(override_dataset.column_names) == ["text"]
        self.cfg = cfg

    def run(self):
        FakeRunner.calls += 1
        sae = sae_lens.TopKTrainingSAE(self.cfg.sae)
        sae.save_inference_model(self.cfg.output_path)
        return sae


def test_train_sae_quick(trained, model):
    root, sae = trained
    assert isinstance(sae, sae_lens.SAE) and not sae.training
    assert sae.cfg.d_in == 32 and sae.cfg.d_sae == 128
    assert sae.cfg.metadata.hook_name == SITE.hook_name
    (folder,) = [p.parent for p in root.rglob(MARKER)]
    assert folder == sae_train.sae_folder(model, SITE, "quick", cache_dir=root)
    assert folder.parent.name == str(SITE) and folder.name.startswith("quick-seed0-")
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left
    x = collect(model, SRC, [SITE], pool="none", progress=False)[SITE]
    assert (encode(sae, model, x) > 0).sum(1).le(8).all()  # TopK k=8


def test_train_sae_reuses_the_cache(trained, model, monkeypatch):
    root, sae = trained
    monkeypatch.setattr(sae_lens, "LanguageModelSAETrainingRunner", None)  # would fail if used
    again = train_sae(model, str(SITE), "quick", cache_dir=root, progress=False)
    torch.testing.assert_close(again.W_dec, sae.W_dec)


def test_train_sae_retrains_a_corrupted_or_unfinished_cache(model, tmp_path, monkeypatch):
    monkeypatch.setattr(sae_lens, "LanguageModelSAETrainingRunner", FakeRunner)
    FakeRunner.calls = 0
    texts = ["some text to train on", "and a second passage"]
    train_sae(model, SITE, cache_dir=tmp_path, texts=texts, progress=False)
    (folder,) = [p.parent for p in tmp_path.rglob(MARKER)]
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    sae = train_sae(model, SITE, cache_dir=tmp_path, texts=texts, progress=False)
    assert FakeRunner.calls == 2 and sae.cfg.d_in == 32
    (folder / MARKER).unlink()  # interrupted before the record was written
    train_sae(model, SITE, cache_dir=tmp_path, texts=texts, progress=False)
    assert FakeRunner.calls == 3
    record = json.loads((folder / MARKER).read_text())
    assert record["key"]["site"] == str(SITE) and record["key"]["texts"] != "builtin"
    train_sae(model, SITE, cache_dir=tmp_path, texts=texts, seed=1, progress=False)
    assert FakeRunner.calls == 4 and len(list(tmp_path.rglob(MARKER))) == 2  # seed is a key


def test_train_sae_bad_inputs(model, tmp_path):
    with pytest.raises(ValueError, match="unknown SAE size 'huge'; sizes: quick, real"):
        train_sae(model, SITE, "huge", cache_dir=tmp_path)
    with pytest.raises(SiteError, match="L7.mlp_out does not exist on tiny-gpt2"):
        train_sae(model, "L7.mlp_out", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="texts must be a non-empty list"):
        train_sae(model, SITE, texts="one string", cache_dir=tmp_path)


def test_training_texts_skip_evaluation_slices():
    from steerinterp.data import load_texts

    texts = set(sae_train.training_texts())
    ppl = load_texts("wiki_ppl")
    assert not texts & set(ppl[:sae_train.EVAL_PPL_HEAD])
    assert not texts & set(ppl[-sae_train.EVAL_CALIB_TAIL:])
    assert set(load_texts("wiki_target")) <= texts
    assert set(load_texts("toxic")) <= texts and not texts & set(load_texts("toxic_prompts"))
    every = sae_train.training_texts()
    toxic = set(load_texts("toxic"))
    share = sum(len(t) for t in every if t in toxic) / sum(map(len, every))
    assert share == pytest.approx(sae_train.TOXIC_SHARE, abs=0.02)


def test_load_sae_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown SAELens release 'no-such-release'"):
        sae_train.load_sae("no-such-release", "x")
    with pytest.raises(ValueError, match="has no SAE 'nope'"):
        sae_train.load_sae("gpt2-small-res-jb", "nope")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="Hub is unreachable.*train_sae"):
        sae_train.load_sae("gpt2-small-res-jb", "blocks.0.hook_resid_pre")


# --------------------------------------------------------------------------- plots


def hand_frames():
    rng = np.random.default_rng(0)
    align, changes = [], []
    for method in ("mean_shift", "linear_act"):
        cos = rng.normal(0, 0.05, 64)
        cos[3] = -0.6
        align.append(pd.DataFrame({"method": method, "site": "L6.mlp_out", "feature": range(64),
                                   "cosine": cos, "abs_cosine": np.abs(cos), "d_in": 640}))
        for text_set in ("source", "target"):
            before = rng.uniform(0, 2, 64)
            after = before + rng.normal(0, 0.3 if text_set == "source" else 0.05, 64)
            changes.append(change_frame(torch.tensor(before), torch.tensor(after), "L6.mlp_out",
                                        text_set).assign(method=method))
    changes = pd.concat(changes, ignore_index=True)
    frames = {m: g for m, g in changes.groupby("method")}
    return pd.concat(align, ignore_index=True), changes, feature_set_overlap(frames, k=10)


def test_plots_from_hand_made_frames(tmp_path):
    align, changes, overlap = hand_frames()
    labels = {3: "f3 · idiot | stupid | fool", 7: "f7 · " + "x" * 60}
    for name, fig, df in [
            ("align", plot_shift_alignment(align, n=8, labels=labels), align),
            ("align_one", plot_shift_alignment(align.drop(columns="method")), align),
            ("changes", plot_feature_changes(changes, n=5, labels=labels), changes),
            ("overlap", plot_feature_overlap(overlap), overlap)]:
        assert fig.get_suptitle() or fig.axes[0].get_title()
        png = save_figure(fig, df, name, tmp_path)
        assert png.stat().st_size > 1000 and (tmp_path / f"{name}.csv").exists()
    with pytest.raises(ValueError, match=r"plot_feature_overlap needs .*missing: \['jaccard'\]"):
        plot_feature_overlap(overlap.drop(columns="jaccard"))
    with pytest.raises(ValueError, match="plot_shift_alignment needs"):
        plot_shift_alignment(align.iloc[:0])


def test_sae_quality_is_one_for_a_perfect_dictionary_and_drops_when_damaged(model):
    from steerinterp.analysis.sae_train import sae_quality

    d = model.cfg.d_model
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))
    cfg = StandardSAEConfig(d_in=d, d_sae=2 * d, metadata=SAEMetadata(hook_name=SITE.hook_name))
    sae = StandardSAE(cfg)
    with torch.no_grad():  # ±directions: relu(<x,d>)·d + relu(-<x,d>)·(-d) = <x,d>·d
        sae.W_dec.copy_(torch.cat([q.T, -q.T]))
        sae.W_enc.copy_(torch.cat([q, -q], dim=1))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    q1 = sae_quality(model, sae, SRC + TGT)
    n = sum(len(model.to_tokens(t)[0]) - 1 for t in SRC + TGT)
    assert q1["site"] == str(SITE) and q1["n_tokens"] == n
    assert q1["fve"] == pytest.approx(1.0, abs=1e-5) and q1["mse"] < 1e-8
    assert q1["l0"] == pytest.approx(d, abs=0.5) and 0 <= q1["dead_share"] <= 0.5
    with torch.no_grad():
        sae.W_dec[: d // 2].zero_()  # lose half the positive directions
    assert sae_quality(model, sae, SRC + TGT)["fve"] < 0.95
    with pytest.raises(ValueError, match="trained at hook"):
        sae_quality(model, sae, SRC, site="L0.attn_out")


def test_train_sae_cli_reports_held_out_quality(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from steerinterp.cli import app

    monkeypatch.setenv("STEERINTERP_CACHE", str(tmp_path))
    args = ["train-sae", "--site", "L1.mlp_out", "--size", "quick", "--model", "tiny-gpt2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "SAE at L1.mlp_out: d_in 32, d_sae 128" in out and "variance explained" in out
    assert list((tmp_path / "sae").rglob(MARKER))  # cached under STEERINTERP_CACHE
    bad = CliRunner().invoke(app, args[:2] + ["L9.mlp_out"] + args[3:])
    assert bad.exit_code != 0 and "layer" in str(bad.exception)
