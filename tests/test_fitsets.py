"""Toxicity fit sets (``steerinterp.experiments.fitsets``): the continuation pool is sampled once, cached,
resumed, split by the scorer; every kind gives disjoint fit / held-out texts; bad input is named.

The tiny random models produce no toxic text, so the scorer is replaced by a deterministic fake
that calls a continuation toxic by a hash of its text (about a third each way)."""

import json
import hashlib

import numpy as np
import pandas as pd
import pytest

from steerinterp.experiments import fitsets
from steerinterp.data import load_texts
from steerinterp.evaluate import scorers
from steerinterp.experiments.fitsets import (ContinuationSettings, FitSetError, continuation_pool,
                                 split_pool, toxicity_fit_sets)

N_PROMPTS = 40


class FakeScorer:
    def __init__(self, fixed: float | None = None):
        self.fixed, self.calls = fixed, 0

    def __call__(self, texts):
        self.calls += 1
        if self.fixed is not None:
            return np.full(len(texts), self.fixed)
        return np.array([int(hashlib.sha256(t.encode()).hexdigest()[:4], 16) / 65535
                         for t in texts])


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fitsets, "fit_prompts", lambda: load_texts("toxic")[:N_PROMPTS])
    scorer = FakeScorer()
    monkeypatch.setattr(scorers, "load_scorer", lambda *a, **k: scorer)
    return scorer


SMALL = ContinuationSettings(samples=2, max_new_tokens=4)


def test_pool_is_sampled_once_cached_and_split_by_score(tiny_gpt2, fake):
    pool = continuation_pool(tiny_gpt2, SMALL, progress=False, log=lambda m: None)
    assert len(pool) == N_PROMPTS * 2
    assert set(pool.columns) >= {"prompt_id", "prompt", "sample", "continuation", "score",
                                 "text"}
    assert all(t.startswith(p) for t, p in zip(pool["text"], pool["prompt"]))
    calls = fake.calls
    again = continuation_pool(tiny_gpt2, SMALL, progress=False, log=lambda m: None)
    assert fake.calls == calls  # read from the cache, nothing sampled again
    assert again["text"].tolist() == pool["text"].tolist()
    sides = split_pool(pool, SMALL)
    assert (sides.loc[sides["side"] == "source", "score"] > 0.5).all()
    assert (sides.loc[sides["side"] == "target", "score"] < 0.1).all()


def test_an_interrupted_build_resumes_only_the_missing_chunk(tiny_gpt2, fake):
    pool = continuation_pool(tiny_gpt2, SMALL, progress=False, log=lambda m: None)
    folder = fitsets.pool_folder(tiny_gpt2, SMALL)
    chunks = sorted(folder.glob("chunk_*.csv"))
    assert len(chunks) == 2  # 40 prompts in chunks of 32
    chunks[1].unlink()
    calls = fake.calls
    again = continuation_pool(tiny_gpt2, SMALL, progress=False, log=lambda m: None)
    assert fake.calls == calls + 1
    assert again["text"].tolist() == pool["text"].tolist()  # seeded per prompt and sample


def test_continuation_sets_are_disjoint_reproducible_and_scored(tiny_gpt2, fake):
    cfg = ContinuationSettings(samples=4, max_new_tokens=4, clean_below=0.35)
    src, tgt = toxicity_fit_sets(tiny_gpt2, n=4, settings=cfg, progress=False)
    held_src, held_tgt = toxicity_fit_sets(tiny_gpt2, n=4, held_out=True, settings=cfg,
                                           progress=False)
    assert len(src) == len(tgt) == 4
    assert not set(src) & set(held_src) and not set(tgt) & set(held_tgt)
    assert toxicity_fit_sets(tiny_gpt2, n=4, settings=cfg, progress=False) == (src, tgt)
    bigger = toxicity_fit_sets(tiny_gpt2, n=8, settings=cfg, progress=False)
    assert bigger[0][:4] == src and bigger[1][:4] == tgt  # a larger n extends
    pool = split_pool(continuation_pool(tiny_gpt2, cfg, progress=False), cfg)
    side = dict(zip(pool["text"], pool["side"]))
    assert {side[t] for t in src} == {"source"} and {side[t] for t in tgt} == {"target"}
    # Held out at the prompt level: no held-out text continues a prompt a fit text continues.
    prompt = dict(zip(pool["text"], pool["prompt_id"]))
    assert not {prompt[t] for t in src + tgt} & {prompt[t] for t in held_src + held_tgt}


def test_paired_sets_share_their_prompts(tiny_gpt2, fake):
    cfg = ContinuationSettings(samples=4, max_new_tokens=4, clean_below=0.35)
    src, tgt = toxicity_fit_sets(tiny_gpt2, n=3, kind="paired", settings=cfg, progress=False)
    prompts = fitsets.fit_prompts()
    for s, t in zip(src, tgt):
        shared = [p for p in prompts if s.startswith(p) and t.startswith(p)]
        assert shared, (s, t)


@pytest.mark.parametrize("kind", ["wiki", "mixed"])
def test_prose_targets_are_length_matched_and_held_out_is_disjoint(tiny_gpt2, kind):
    src, tgt = toxicity_fit_sets(tiny_gpt2, n=6, kind=kind)
    h_src, h_tgt = toxicity_fit_sets(tiny_gpt2, n=6, kind=kind, held_out=True)
    assert len(src) == len(tgt) == 6
    assert not set(src) & set(h_src) and not set(tgt) & set(h_tgt)
    assert set(src) <= set(fitsets.fit_prompts()) | {s for s in src}
    calib = set(fitsets.calibration_prompts())
    assert not calib & set(fitsets.fit_prompts())
    assert not calib & set(load_texts("toxic_prompts"))


def test_too_few_toxic_continuations_is_named(tiny_gpt2, monkeypatch, tmp_path):
    monkeypatch.setenv("STEERINTERP_CACHE", str(tmp_path))
    monkeypatch.setattr(fitsets, "fit_prompts", lambda: load_texts("toxic")[:8])
    monkeypatch.setattr(scorers, "load_scorer", lambda *a, **k: FakeScorer(fixed=0.05))
    with pytest.raises(FitSetError, match=r"found 0 toxic \(> 0.5\) and 16 non-toxic"):
        toxicity_fit_sets(tiny_gpt2, n=4, settings=SMALL, progress=False)


def test_too_few_prompts_left_for_held_out_texts_is_named(tiny_gpt2, monkeypatch):
    """Enough continuations, but every one continues a prompt the fit texts use: held-out
    texts would share those prompts, so the shortfall is named instead."""
    rows = [{"prompt_id": p, "prompt": f"p{p}", "sample": k, "continuation": f" c{k}",
             "score": 0.9 if p == 0 else 0.01, "text": f"p{p} c{k}"}
            for p in (0, 1) for k in range(4)]
    monkeypatch.setattr(fitsets, "continuation_pool", lambda *a, **k: pd.DataFrame(rows))
    assert len(toxicity_fit_sets(tiny_gpt2, n=2, settings=SMALL)[0]) == 2
    with pytest.raises(FitSetError, match="found 0 toxic .* continuations of prompts that no "
                                          "fit text continues"):
        toxicity_fit_sets(tiny_gpt2, n=2, held_out=True, settings=SMALL)


def test_bad_kind_and_n(tiny_gpt2):
    with pytest.raises(FitSetError, match="unknown fit-set kind 'jigsaw'"):
        toxicity_fit_sets(tiny_gpt2, kind="jigsaw")
    with pytest.raises(FitSetError, match="n must be an integer >= 2"):
        toxicity_fit_sets(tiny_gpt2, n=1, kind="wiki")


def test_a_packaged_pool_is_used_without_sampling(tiny_gpt2, fake, monkeypatch, tmp_path):
    pool = continuation_pool(tiny_gpt2, SMALL, progress=False)
    shipped = tmp_path / "shipped.csv.gz"
    from steerinterp.io import write_csv
    write_csv(shipped, pool[list(fitsets.POOL_COLUMNS)])
    monkeypatch.setenv("STEERINTERP_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(fitsets, "packaged_pool", lambda name: shipped)
    calls = fake.calls
    again = continuation_pool(tiny_gpt2, SMALL, progress=False)
    assert fake.calls == calls
    assert again["text"].tolist() == pool["text"].tolist()


def test_compare_fit_sets_calibrates_evaluates_and_resumes(tiny_gpt2, tmp_path):
    """The comparison driver on the tiny model: one row per (kind, method), λ within the
    method's range, the PPL cost at λ = 1, and a second call reads everything back."""
    from steerinterp.experiments.fitset_choice import compare_fit_sets

    kw = dict(kinds=("wiki",), methods=("mean_shift",), n=4, n_prompts=2, n_ppl=4,
              folder=tmp_path, progress=False, log=lambda m: None)
    frame = compare_fit_sets(tiny_gpt2, **kw)
    assert list(frame["kind"]) == ["wiki"] and list(frame["method"]) == ["mean_shift"]
    assert 0 <= frame["strength"].iloc[0] <= 1 and frame["ppl_at_1"].iloc[0] > 0
    assert (tmp_path / "fitsets.csv").exists()
    again = compare_fit_sets(tiny_gpt2, **kw)
    assert again["mean_score"].tolist() == frame["mean_score"].tolist()
    # Map options name their rows and folders, and reach the fitted steerer.
    other = compare_fit_sets(tiny_gpt2, **kw, options={"causal_target": "unsteered"})
    assert other["options"].tolist() == ["causal_target=unsteered"]
    saved = tmp_path / "steerers" / "wiki" / "mean_shift[causal_target=unsteered]"
    assert json.loads((saved / "config.json").read_text())["config"]["causal_target"] == \
        "unsteered"


def test_the_shipped_pools_are_found_where_the_package_looks():
    """Every pool shipped in ``steerinterp/resources/fitsets`` is what ``packaged_pool`` returns
    for its cache name (a moved module must not lose them: they save a 34-minute sampling)."""
    from pathlib import Path

    import steerinterp

    shipped = sorted((Path(steerinterp.__file__).parent / "resources" / "fitsets").glob("*.csv.gz"))
    assert shipped, "the default model's continuation pool is not packaged"
    for path in shipped:
        assert fitsets.packaged_pool(path.name.removesuffix(".csv.gz")) == path
