"""Teacher-forced perplexity under steering (METHODS.md §4.5): chunked NLL against TL's loss."""

import importlib
import math

import numpy as np
import pandas as pd
import pytest
import torch

from steerinterp.evaluate.perplexity import delta_perplexity, perplexity, summarize_perplexity
from steerinterp.steer import make, steered
from steerinterp.tokens import token_ids

# importlib: the package re-exports the function ``perplexity``, which shadows the module name
ppl_mod = importlib.import_module("steerinterp.evaluate.perplexity")
logits_mod = importlib.import_module("steerinterp.evaluate.logits")

SOURCE = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig"]
TARGET = ["the river flows to the sea", "a library holds many books", "the train leaves at noon"]


def _tl_nll(model, text, max_tokens=64):
    """Summed NLL of one unpadded text from TransformerLens's own per-token loss."""
    tokens = torch.tensor([token_ids(model, [text], max_tokens)[0]], device=model.cfg.device)
    with torch.no_grad():
        return model(tokens, return_type="loss", loss_per_token=True).double().sum().item()


def test_matches_transformer_lens_loss_on_unpadded_texts(tiny, texts):
    texts = [t for t in texts if len(t) > 1]
    for i, text in enumerate(texts):
        df = perplexity(tiny, [text], progress=False)
        assert df.loc[0, "nll"] == pytest.approx(_tl_nll(tiny, text), rel=1e-5)


def test_padding_does_not_change_a_text(tiny, texts):
    texts = [t for t in texts if len(t) > 1]
    batch = perplexity(tiny, texts, batch_size=len(texts), progress=False)
    for i, text in enumerate(texts):
        alone = perplexity(tiny, [text], progress=False)
        assert batch.loc[i, "nll"] == pytest.approx(alone.loc[0, "nll"], rel=1e-5)


def test_chunked_unembedding_equals_one_chunk(tiny_gemma, texts, monkeypatch):
    whole = perplexity(tiny_gemma, texts[:4], progress=False)
    monkeypatch.setattr(logits_mod, "LOGITS_PER_CHUNK", 3 * tiny_gemma.cfg.d_vocab)  # 3 positions
    chunked = perplexity(tiny_gemma, texts[:4], progress=False)
    np.testing.assert_allclose(chunked["nll"], whole["nll"], rtol=1e-6)


def test_columns_counts_and_truncation(tiny_gpt2):
    texts = ["hello", "ab", "a much longer sentence than the others"]
    df = perplexity(tiny_gpt2, texts, max_tokens=8, batch_size=2, progress=False)
    assert list(df.columns) == ["text_id", "n_tokens", "nll", "ppl"]
    assert list(df["text_id"]) == [0, 1, 2]  # caller's order, though batches run longest first
    # byte tokenizer + BOS: len(text) + 1 real tokens, truncated to 8, one fewer predicted
    assert list(df["n_tokens"]) == [5, 2, 7]
    np.testing.assert_allclose(df["ppl"], np.exp(df["nll"] / df["n_tokens"]))
    assert df.loc[2, "nll"] == pytest.approx(_tl_nll(tiny_gpt2, texts[2], max_tokens=8), rel=1e-5)


@pytest.fixture(scope="module")
def shift(tiny_gpt2):
    return make("mean_shift").fit(tiny_gpt2, source=SOURCE, target=TARGET)


def test_steering_is_active_on_all_positions(tiny_gpt2, shift, texts):
    base = perplexity(tiny_gpt2, texts[:3], progress=False)
    zero = perplexity(tiny_gpt2, texts[:3], shift, strength=0.0, progress=False)
    np.testing.assert_allclose(zero["nll"], base["nll"], rtol=1e-6)
    strong = perplexity(tiny_gpt2, texts[:3], shift, strength=1.0, progress=False)
    assert not np.allclose(strong["nll"], base["nll"], rtol=1e-3)
    with steered(tiny_gpt2, shift, strength=1.0):
        expected = [_tl_nll(tiny_gpt2, t) for t in texts[:3]]
    np.testing.assert_allclose(strong["nll"], expected, rtol=1e-5)
    assert not any(h._forward_hooks for h in tiny_gpt2.hook_dict.values())  # hooks removed


def test_bf16_model_gives_close_finite_results(texts):
    from steerinterp.models import tiny_model

    full = perplexity(tiny_model("gemma", seed=0), texts[:3], progress=False)
    half = perplexity(tiny_model("gemma", seed=0, dtype=torch.bfloat16), texts[:3], progress=False)
    assert np.isfinite(half["nll"]).all()
    np.testing.assert_allclose(half["nll"], full["nll"], rtol=0.05)


def test_progress_bar_can_be_silenced(tiny_gpt2, capsys):
    perplexity(tiny_gpt2, ["hello there"], progress=False)
    assert capsys.readouterr().err == ""
    perplexity(tiny_gpt2, ["hello there"], progress=True)
    assert "perplexity" in capsys.readouterr().err


def test_bad_input_is_named(tiny_gpt2):
    with pytest.raises(ValueError, match="empty text list"):
        perplexity(tiny_gpt2, [], progress=False)
    with pytest.raises(ValueError, match="single string"):
        perplexity(tiny_gpt2, "hello", progress=False)
    with pytest.raises(ValueError, match=r"1 text\(s\) have no token after .*#1: ''.*perplexity needs"):
        perplexity(tiny_gpt2, ["hello", ""], progress=False)
    with pytest.raises(ValueError, match="max_tokens"):
        perplexity(tiny_gpt2, ["hello"], max_tokens=1, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        perplexity(tiny_gpt2, ["hello"], batch_size=0, progress=False)


# --------------------------------------------------------------------------- aggregation


def _df(nll, n_tokens):
    nll, n_tokens = np.asarray(nll, float), np.asarray(n_tokens)
    return pd.DataFrame({"text_id": range(len(nll)), "n_tokens": n_tokens, "nll": nll,
                         "ppl": np.exp(nll / n_tokens)})


def test_summary_hand_example():
    df = _df([2 * math.log(4), 4 * math.log(2)], [2, 4])  # per-text PPL 4 and 2
    out = summarize_perplexity(df)
    assert out["ppl"] == pytest.approx(3.0)
    assert out["ppl_se"] == pytest.approx(1.0)  # std([4, 2]) / √2
    assert out["ppl_token"] == pytest.approx(math.exp(4 * math.log(2) / 3))  # 2^(4/3)
    assert (out["n_texts"], out["n_tokens"]) == (2, 6)
    # delta method on r = Σnll/Σn with texts as clusters: influence (nll_g − r·n_g)/N
    r = 4 * math.log(2) / 3
    psi = np.array([2 * math.log(4) - 2 * r, 4 * math.log(2) - 4 * r]) / 6
    assert out["ppl_token_se"] == pytest.approx(math.exp(r) * math.sqrt(2 * (psi ** 2).sum()))


def test_delta_hand_example_and_pairing():
    base = _df([2 * math.log(4), 4 * math.log(2), 3 * math.log(3)], [2, 4, 3])  # PPL 4, 2, 3
    steer = _df([2 * math.log(5), 4 * math.log(2), 3 * math.log(6)], [2, 4, 3])  # PPL 5, 2, 6
    out = delta_perplexity(steer.iloc[::-1], base)  # paired by text_id, not row order
    assert out["delta_ppl"] == pytest.approx(4 / 3)
    assert out["delta_ppl_se"] == pytest.approx(np.std([1, 0, 3], ddof=1) / math.sqrt(3))
    assert out["delta_ppl_rel"] == pytest.approx(13 / 9 - 1)
    s, b = summarize_perplexity(steer), summarize_perplexity(base)
    assert out["delta_ppl_token"] == pytest.approx(s["ppl_token"] - b["ppl_token"])
    assert out["delta_ppl_token_rel"] == pytest.approx(s["ppl_token"] / b["ppl_token"] - 1)
    assert out["n_texts"] == 3


def test_delta_token_se_reduces_to_the_summary_se_against_a_constant_base():
    rng = np.random.default_rng(0)
    n = rng.integers(5, 60, size=20)
    steer = _df(rng.uniform(1, 4, size=20) * n, n)
    base = _df(np.zeros(20), n)  # PPL 1 everywhere: no variance of its own
    out = delta_perplexity(steer, base)
    assert out["delta_ppl_token_se"] == pytest.approx(summarize_perplexity(steer)["ppl_token_se"])
    identical = delta_perplexity(steer, steer)
    assert identical["delta_ppl"] == 0 and identical["delta_ppl_token_se"] == 0


def test_aggregation_refuses_mismatched_frames():
    base = _df([1.0, 2.0, 3.0], [2, 2, 2])
    with pytest.raises(ValueError, match="1 base text_id.*missing"):
        delta_perplexity(base.iloc[:2], base)
    with pytest.raises(ValueError, match="n_tokens differ"):
        delta_perplexity(base.assign(n_tokens=3), base)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['ppl'\]"):
        summarize_perplexity(base.drop(columns="ppl"))
    with pytest.raises(ValueError, match="no rows"):
        summarize_perplexity(base.iloc[:0])


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_gemma_chunked_nll_matches_transformer_lens():
    """262k vocabulary, several chunks; the reference is TL's full-logit loss on the same
    left-padded batch (one forward, to stay fast; padding invariance is tested above)."""
    from steerinterp import load_model, load_texts
    from steerinterp.tokens import pad_left

    model = load_model("gemma-3-270m", device="cpu")
    texts = load_texts("wiki_ppl", n=8)
    df = perplexity(model, texts, max_tokens=64, batch_size=8, progress=False)
    assert logits_mod.LOGITS_PER_CHUNK // model.cfg.d_vocab_out < df["n_tokens"].sum()  # chunked
    batch = pad_left(model, token_ids(model, texts, 64), skip_first=False)
    with torch.inference_mode():
        loss = model(batch.tokens, attention_mask=batch.attention_mask, return_type="loss",
                     loss_per_token=True)
    mask = batch.attention_mask.bool()
    expected = (loss.double() * (mask[:, :-1] & mask[:, 1:])).sum(1).cpu().numpy()
    per_token = (df["nll"].to_numpy() - expected) / df["n_tokens"].to_numpy()
    assert np.abs(per_token).max() < 1e-4
