"""Toxicity scorers: the torch port of the Jigsaw BiLSTM against the real Keras model, the
Keras tokenizer re-implementation, the JSON vocabulary cache, and the error paths."""

import io
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from typecheck import checks_off
from steerinterp import models
from steerinterp.evaluate import scorers as sc
from steerinterp.evaluate.scorers import (LABELS, JigsawScorer, KerasTokenizer, ProfanityScorer,
                                          RobertaScorer, Scorer, load_jigsaw_vocab, load_scorer)

# Produced once by the script stored in the file ("script"): the package's own Keras model.
REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "jigsaw_reference.json").read_text())
FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


@pytest.fixture(scope="module", autouse=True)
def _tmp_cache(tmp_path_factory):
    """Keep the vocabulary JSON out of the user's cache; reset the lru caches around the module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEERINTERP_CACHE", str(tmp_path_factory.mktemp("cache")))
        sc._jigsaw_tokenizer.cache_clear()
        yield
    sc._jigsaw_tokenizer.cache_clear()


@pytest.fixture(scope="module")
def scorer():
    return JigsawScorer(device="cpu", batch_size=8)


# ---------------------------------------------------------------- parity with Keras

def test_matches_keras_reference(scorer):
    texts = [r["text"] for r in REFERENCE["rows"]]
    expected = np.array([r["scores"] for r in REFERENCE["rows"]])
    got = scorer.labels(texts)
    assert list(got.columns) == REFERENCE["labels"] == list(LABELS)
    np.testing.assert_allclose(got.to_numpy(), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(scorer(texts), expected[:, 0], atol=1e-4, rtol=0)


def test_tokenizer_matches_keras_ids(scorer):
    for row in REFERENCE["rows"]:
        assert scorer.tokenizer.encode(row["text"])[-100:] == row["ids"], row["text"]


def test_sanity_sentences(scorer):
    toxic, nice = scorer(["you are a stupid idiot", "have a nice day"])
    assert toxic == pytest.approx(0.997, abs=2e-3)
    assert nice == pytest.approx(0.04, abs=0.01)


# ---------------------------------------------------------------- tokenizer edge cases

def test_punctuation_filtered_like_keras(scorer):
    tok = scorer.tokenizer
    assert tok.words("Hello, WORLD!!! (really)?") == ["hello", "world", "really"]
    assert tok.words("don't\tstop\nnow") == ["don't", "stop", "now"]  # ' is not a filter
    assert tok.words("a\rb") == ["a\rb"]  # Keras splits on " " only; \r is not filtered
    assert tok.encode("!!!...???") == []


def test_unknown_and_rare_words_dropped():
    tok = KerasTokenizer({"a": 1, "b": 2, "rare": 7}, FILTERS, num_words=5, maxlen=4)
    assert tok.encode("a zzz b rare") == [1, 2]
    oov = KerasTokenizer({"a": 1, "<oov>": 2, "rare": 7}, FILTERS, num_words=5, oov_index=2)
    assert oov.encode("a zzz rare") == [1, 2, 2]


def test_pad_and_truncate_at_front():
    tok = KerasTokenizer({w: i for i, w in enumerate("abcdefg", start=1)}, FILTERS, maxlen=4)
    out = tok(["a b c d e f g", "a b", ""])
    assert out.tolist() == [[4, 5, 6, 7], [0, 0, 1, 2], [0, 0, 0, 0]]
    assert out.dtype == torch.long


def test_long_text_keeps_the_last_100_words(scorer):
    text = " ".join(["idiot"] * 50 + ["the"] * 100)
    assert scorer.tokenizer([text]).tolist() == [[1] * 100]  # "the" is word 1
    assert scorer([text])[0] == pytest.approx(scorer([" ".join(["the"] * 100)])[0], abs=1e-6)


def test_empty_text_scores_as_all_padding(scorer):
    assert scorer.tokenizer([""]).sum() == 0
    empty, punct, unknown = scorer(["", "?!.", "zxqvbn glorpax"])
    assert 0 < empty < 1 and punct == empty and unknown == empty


# ---------------------------------------------------------------- API

def test_batch_invariance(scorer):
    texts = ["you are a stupid idiot", "", "have a nice day " * 40, "fuck", "thanks for the edit",
             "what the f*ck is wrong with you, moron?"] * 3
    batched = JigsawScorer(device="cpu", batch_size=4)(texts)
    alone = np.array([scorer([t])[0] for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-6, rtol=0)


def test_outputs_and_labels_frame(scorer):
    out = scorer(["hello", "you idiot"])
    assert isinstance(scorer, Scorer) and scorer.name == "jigsaw"
    assert out.shape == (2,) and out.dtype == np.float64 and ((out >= 0) & (out <= 1)).all()
    df = scorer.labels(["hello", "you idiot"])
    assert list(df.columns) == list(LABELS) and len(df) == 2
    np.testing.assert_array_equal(df["toxic"].to_numpy(), out)
    empty = scorer.labels([])
    assert list(empty.columns) == list(LABELS) and len(empty) == 0


def test_empty_input_and_bad_texts(scorer):
    out = scorer([])
    assert out.shape == (0,) and out.dtype == np.float64
    # checks_off: these are not lists of strings, which the test checker refuses first
    with pytest.raises(TypeError, match=r"texts\[1\] is int"), checks_off():
        scorer(["fine", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"), checks_off():
        scorer.labels([None])
    with pytest.raises(TypeError, match="single string"), checks_off():
        scorer("not a list")
    with pytest.raises(ValueError, match="batch_size"):
        JigsawScorer(device="cpu", batch_size=0)


def test_load_scorer():
    s = load_scorer("jigsaw", device="cpu", batch_size=3)
    assert isinstance(s, JigsawScorer) and s.batch_size == 3 and s.device == "cpu"
    assert s.model is JigsawScorer(device="cpu").model  # cached per device
    with pytest.raises(ValueError, match="jigsaw, profanity, roberta"):
        load_scorer("perspective")


# ---------------------------------------------------------------- assets and the vocabulary cache

def test_missing_package_error(monkeypatch):
    monkeypatch.setattr(sc, "_PACKAGE", "no_such_package_for_steerinterp")
    sc._jigsaw_model.cache_clear()
    with pytest.raises(FileNotFoundError,
                       match=r"toxic-comment-classifier.*pip install --no-deps "
                             r"toxic-comment-classifier==0\.3\.0"):
        JigsawScorer(device="cpu")


def test_missing_file_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sc, "_package_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="model.weights.h5 is missing.*reinstall"):
        sc.jigsaw_asset_paths()


def test_vocab_json_rebuilt_when_missing_or_corrupt(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERINTERP_CACHE", str(tmp_path))
    path = tmp_path / "jigsaw" / "vocab.json"
    vocab = load_jigsaw_vocab()
    assert path.is_file() and vocab["num_words"] == 20000 and vocab["oov_index"] is None
    assert len(vocab["word_index"]) == 19999 and max(vocab["word_index"].values()) == 19999
    for damage in ("", "{not json", json.dumps({"format": 0})):
        path.write_text(damage)
        assert load_jigsaw_vocab() == vocab
        assert json.loads(path.read_text()) == vocab
    path.unlink()
    assert load_jigsaw_vocab() == vocab and path.is_file()


def test_no_unpickling_when_json_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERINTERP_CACHE", str(tmp_path))
    load_jigsaw_vocab()

    def refuse(*_):
        raise AssertionError("the pickle was opened although the JSON cache is valid")
    monkeypatch.setattr(sc, "_vocab_from_pickle", refuse)
    assert load_jigsaw_vocab()["word_index"]["the"] == 1


def test_stub_unpickler_refuses_other_globals():
    payload = pickle.dumps(Path("x"))  # any class outside the allow-list
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        sc._StubUnpickler(io.BytesIO(payload)).load()


# ---------------------------------------------------------------- optional scorers

def test_profanity_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # makes the import fail
    with pytest.raises(ImportError, match="alt-profanity-check"):
        load_scorer("profanity")


def test_profanity_wraps_predict_prob(monkeypatch):
    fake = types.ModuleType("profanity_check")
    fake.predict_prob = lambda texts: np.array([len(t) / 10 for t in texts])
    monkeypatch.setitem(sys.modules, "profanity_check", fake)
    s = ProfanityScorer(batch_size=2)
    np.testing.assert_allclose(s(["a", "abc", "abcde"]), [0.1, 0.3, 0.5])
    assert s([]).shape == (0,)


def test_roberta_offline_error_is_fast_and_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # _hub_reachable answers without the network
    monkeypatch.setattr(models, "_hub_cached", lambda name: False)
    with pytest.raises(RuntimeError, match="unreachable.*load_scorer\\('jigsaw'\\)"):
        RobertaScorer(device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(scorer):
    texts = [r["text"] for r in REFERENCE["rows"]]
    cuda = JigsawScorer(device="cuda")
    assert cuda.device.startswith("cuda")
    np.testing.assert_allclose(cuda(texts), scorer(texts), atol=1e-4, rtol=0)
