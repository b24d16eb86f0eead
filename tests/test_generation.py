"""Generation: the KV-cached decode loop (greedy parity with TransformerLens), paired sampling,
steering during decoding, special-token stripping, validation, and the JSONL files."""

import copy
import os
from dataclasses import replace

import pytest
import torch

from typecheck import checks_off
from steerinterp.evaluate import generation as gen
from steerinterp.evaluate.generation import (
    COLUMNS, GenerationSettings, PRESETS, decode, decode_continuations, generate,
    load_generations, row_seed, save_generations, settings_for)
from steerinterp.io import CorruptFileError
from steerinterp.models import _transposed_unembed, tiny_model
from steerinterp.steer import make, steered
from steerinterp.tokens import pad_left, token_ids

PROMPTS = ["the cat sat on the mat", "a", "hello there, my friend",
           "activation steering edits what a model computes"]
GREEDY = GenerationSettings(temperature=0.0, samples=1, max_new_tokens=16)
SOURCE = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig"]
TARGET = ["the river flows to the sea", "a library holds many books", "the train leaves"]


def _batch(model, prompts=PROMPTS):
    return pad_left(model, token_ids(model, prompts, 64), skip_first=False)


@torch.inference_mode()
def _tl_generate(model, batch, n):
    """TL's own loop on the same left-padded tokens (its mask follows the padding side)."""
    side = model.tokenizer.padding_side
    model.tokenizer.padding_side = "left"
    try:
        out = model.generate(batch.tokens, max_new_tokens=n, do_sample=False,
                             use_past_kv_cache=True, stop_at_eos=False, verbose=False)
    finally:
        model.tokenizer.padding_side = side
    return out[:, batch.tokens.shape[1]:]


@torch.inference_mode()
def _naive_greedy(model, prompt_ids, n, penalty=1.0):
    """Reference: full forward of the whole sequence each step, penalty from a Python set."""
    seq = list(prompt_ids)
    for _ in range(n):
        logits = model(torch.tensor([seq]))[0, -1].float()
        for t in set(seq):
            logits[t] = logits[t] * penalty if logits[t] < 0 else logits[t] / penalty
        seq.append(int(logits.argmax()))
    return seq[len(prompt_ids):]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine the thread
    hand-offs made these tests ~7x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gemma_t(tiny_gemma):
    """tiny-gemma with W_U stored transposed-contiguous, as load_model stores it."""
    model = copy.deepcopy(tiny_gemma)
    _transposed_unembed(model)
    return model


@pytest.fixture(scope="module")
def actadd(tiny_gpt2):
    return make("actadd").fit(tiny_gpt2, source=SOURCE, target=TARGET)


# --------------------------------------------------------------------------- greedy parity


@pytest.fixture(scope="module")
def gemma_bf16():
    return tiny_model("gemma", seed=0, dtype=torch.bfloat16)


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_gemma", "gemma_t", "gemma_bf16"])
def test_greedy_equals_tl_generate(request, name):
    model = request.getfixturevalue(name)
    stride = model.unembed.W_U.stride()
    batch = _batch(model)
    new, counts = decode(model, batch.tokens, batch.attention_mask,
                         replace(GREEDY, max_new_tokens=24))
    assert torch.equal(new, _tl_generate(model, batch, 24))
    assert counts.tolist() == [24] * len(PROMPTS)
    assert model.unembed.W_U.stride() == stride  # the caller's model is left as it was


def test_repetition_penalty_matches_full_recompute(tiny_gpt2):
    settings = replace(GREEDY, repetition_penalty=1.8, max_new_tokens=12)
    ids = token_ids(tiny_gpt2, PROMPTS, 64)
    batch = _batch(tiny_gpt2)
    new, _ = decode(tiny_gpt2, batch.tokens, batch.attention_mask, settings)
    plain, _ = decode(tiny_gpt2, batch.tokens, batch.attention_mask, GREEDY)
    assert not torch.equal(new[:, :12], plain[:, :12])
    for row, x in zip(new.tolist(), ids):
        assert row == _naive_greedy(tiny_gpt2, x, 12, penalty=1.8)


def test_steering_applies_on_every_decoded_position(tiny_gpt2, actadd):
    batch = _batch(tiny_gpt2)
    seen = []
    probe = (actadd.sites[0].hook_name, lambda acts, hook: seen.append(acts.shape[1]))
    with tiny_gpt2.hooks(fwd_hooks=[probe]), steered(tiny_gpt2, actadd, strength=8.0):
        new, _ = decode(tiny_gpt2, batch.tokens, batch.attention_mask, GREEDY)
    # prefill sees the whole padded prompt, then one position per new token but the last
    assert seen == [batch.tokens.shape[1]] + [1] * (GREEDY.max_new_tokens - 1)
    plain, _ = decode(tiny_gpt2, batch.tokens, batch.attention_mask, GREEDY)
    assert not torch.equal(new, plain)
    with steered(tiny_gpt2, actadd, strength=8.0):  # cached steering = full-forward steering
        ref = [_naive_greedy(tiny_gpt2, x, GREEDY.max_new_tokens)
               for x in token_ids(tiny_gpt2, PROMPTS, 64)]
    assert new.tolist() == ref


def test_generate_with_steerer_changes_text_and_removes_hooks(tiny_gpt2, actadd):
    base = generate(tiny_gpt2, PROMPTS, settings=PRESETS["greedy"], progress=False)
    moved = generate(tiny_gpt2, PROMPTS, actadd, strength=8.0, settings=PRESETS["greedy"],
                     progress=False)
    assert (base.continuation != moved.continuation).any()
    assert not any(hp._forward_hooks for hp in tiny_gpt2.hook_dict.values())


# --------------------------------------------------------------------------- sampling


def test_tiny_top_p_or_top_k_1_is_greedy(tiny_gemma):
    greedy = generate(tiny_gemma, PROMPTS, settings=PRESETS["greedy"], progress=False)
    for kw in ({"top_p": 1e-9}, {"top_k": 1, "top_p": 1.0}):
        sampled = generate(tiny_gemma, PROMPTS, settings=settings_for(samples=2, **kw),
                           progress=False)
        for s in (0, 1):
            part = sampled[sampled["sample"] == s].reset_index(drop=True)
            assert part.continuation.tolist() == greedy.continuation.tolist()


def test_samples_are_paired_across_batches_and_order(tiny_gemma):
    settings = settings_for(samples=3, temperature=1.5, top_p=0.95, repetition_penalty=1.1)
    alone = generate(tiny_gemma, [PROMPTS[2]], settings=settings, progress=False)
    mixed = list(reversed(PROMPTS)) + ["x y z " * 5]
    for bs in (1, 4, 16):
        crowd = generate(tiny_gemma, mixed, settings=replace(settings, batch_size=bs),
                         progress=False)
        mine = crowd[crowd.prompt == PROMPTS[2]].reset_index(drop=True)
        # exact: the tiny fp32 model gives the same logits alone and left-padded in a batch
        assert mine.continuation.tolist() == alone.continuation.tolist()
    assert alone.continuation.nunique() == 3  # samples differ
    other = generate(tiny_gemma, [PROMPTS[2]], settings=replace(settings, seed=1),
                     progress=False)
    assert other.continuation.tolist() != alone.continuation.tolist()


def test_strength_zero_shares_the_noise(tiny_gpt2, actadd):
    settings = settings_for(samples=2)
    base = generate(tiny_gpt2, PROMPTS, settings=settings, progress=False)
    zero = generate(tiny_gpt2, PROMPTS, actadd, strength=0.0, settings=settings, progress=False)
    assert base.equals(zero)


def test_inverse_cdf_follows_the_filtered_distribution():
    torch.manual_seed(0)
    logits = torch.randn(3000) * 2  # vocab > HEAD: exercises the sorted head + id-order tail
    probs = logits.softmax(-1)
    grid = (torch.arange(2500) + 0.5) / 2500  # evenly spaced: frequency error <= 1/2500
    for kw in ({"top_p": 1.0}, {"top_p": 0.5}, {"top_k": 5, "top_p": 1.0},
               {"top_k": 40, "top_p": 0.7}):
        s = GenerationSettings(**kw)
        picks = torch.tensor([gen._sample_row(logits, probs, float(u), s) for u in grid])
        counts = torch.bincount(picks, minlength=3000).float() / picks.numel()
        order = logits.sort(descending=True).indices
        want = probs.clone()
        if "top_k" in kw:  # HF order: top-k, renormalise, then top-p
            want[order[kw["top_k"]:]] = 0
            want /= want.sum()
        if kw["top_p"] < 1:
            cum = want[order].cumsum(0) - want[order]
            want[order[cum >= kw["top_p"]]] = 0
        want /= want.sum()
        assert (counts - want).abs().max() < 1e-3
        assert set(picks.tolist()) <= set(want.nonzero()[:, 0].tolist())


def test_flat_distribution_nucleus_leaves_the_head():
    flat = torch.zeros(5000)  # all tied: the canonical order is by id
    s = GenerationSettings(top_p=0.9)
    assert gen._sample_row(flat, flat.softmax(-1), 0.0, s) == 0
    assert 4400 < gen._sample_row(flat, flat.softmax(-1), 0.999, s) < 4500


def test_row_seed_is_stable():
    assert row_seed("abc", 0, 0) == row_seed("abc", 0, 0)
    assert len({row_seed("abc", 0, 0), row_seed("abc", 1, 0), row_seed("abc", 0, 1),
                row_seed("abd", 0, 0)}) == 4
    assert row_seed("abc", 0, 0) == 7729995567143403606  # a hash change would unpair old runs


# --------------------------------------------------------------------------- text and EOS


def _force(token_at_step):
    """A hook on the logits that makes greedy emit ``token_at_step(step, row)`` (or leaves it)."""
    state = {"step": 0}

    def hook(logits, hook):
        logits = logits.clone()
        for row in range(logits.shape[0]):
            t = token_at_step(state["step"], row)
            if t is not None:
                logits[row, -1, t] = 1e4
        state["step"] += 1
        return logits
    return [("unembed.hook_out", hook)]


def test_special_tokens_never_reach_the_text(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    a = tok.convert_tokens_to_ids("a")
    specials = [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]
    with tiny_gpt2.hooks(fwd_hooks=_force(lambda s, r: specials[s % 3] if s % 2 else a)):
        df = generate(tiny_gpt2, PROMPTS[:2], settings=PRESETS["greedy"], progress=False)
    assert df.continuation.tolist() == ["a" * 10] * 2
    assert df.n_new_tokens.tolist() == [20, 20]


def test_stop_at_eos(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    batch = _batch(tiny_gpt2)
    settings = replace(GREEDY, stop_at_eos=True)
    with tiny_gpt2.hooks(fwd_hooks=_force(lambda s, r: tok.eos_token_id
                                          if (s, r) == (2, 0) else None)):
        new, counts = decode(tiny_gpt2, batch.tokens, batch.attention_mask, settings)
    assert counts.tolist() == [3] + [16] * 3
    assert new[0, 2] == tok.eos_token_id and (new[0, 3:] == tok.pad_token_id).all()
    with tiny_gpt2.hooks(fwd_hooks=_force(lambda s, r: tok.eos_token_id if s == 1 else None)):
        new, counts = decode(tiny_gpt2, batch.tokens, batch.attention_mask, settings)
    assert new.shape[1] == 2 and counts.tolist() == [2] * 4  # all finished: the loop ends


def test_table_columns_order_and_scores(tiny_gpt2, capsys):
    df = generate(tiny_gpt2, PROMPTS, settings=settings_for(samples=2, batch_size=3),
                  scorer=lambda texts: [len(t) / 100 for t in texts], progress=False)
    assert list(df.columns) == [*COLUMNS, "score"]
    assert df.prompt_id.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert df["sample"].tolist() == [0, 1] * 4 and (df.seed == 0).all()
    assert df.prompt.tolist() == [p for p in PROMPTS for _ in (0, 1)]
    assert df.score.tolist() == [len(t) / 100 for t in df.continuation]
    assert capsys.readouterr().err == ""  # progress=False: no bar


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, words", [
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"temperature": float("nan")}, "temperature must be a finite"),
    ({"top_p": 0.0}, "top_p must be in (0, 1]"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k must be >= 1"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"samples": 0}, "samples must be >= 1"), ({"max_new_tokens": 2.5}, "max_new_tokens must"),
    ({"batch_size": True}, "batch_size must be an integer"), ({"seed": "1"}, "seed"),
    ({"max_prompt_tokens": 0}, "max_prompt_tokens"), ({"stop_at_eos": 1}, "stop_at_eos"),
])
def test_bad_settings(kw, words):
    # checks_off: some values are of the wrong type (2.5, "1"), which the test checker refuses
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("]", r"\]")), \
            checks_off():
        GenerationSettings(**kw)


def test_bad_presets():
    with pytest.raises(ValueError, match="unknown generation preset 'fast'"):
        settings_for("fast")
    with pytest.raises(ValueError, match=r"unknown generation setting\(s\) \['topp'\]"):
        settings_for("act", topp=0.5)
    act = settings_for("act")
    assert (act.max_new_tokens, act.top_p, act.repetition_penalty, act.samples) == (32, .3, 1.2, 1)


@pytest.mark.parametrize("prompts, words", [
    ([], "empty text list: no prompts given"), ("one string", "not a single string"),
    (["ok", "", "fine", "  \n"], r"prompts at positions \[1, 3\] are empty or whitespace-only "
                                 r"\(2 of 4\)"),
    (["ok", None], r"prompts\[1\] is NoneType \(positions \[1\]\)"),
])
def test_bad_prompts(tiny_gpt2, prompts, words):
    with pytest.raises(ValueError, match=words), checks_off():  # None is not a str
        generate(tiny_gpt2, prompts, progress=False)


def test_prompt_too_long(tiny_gpt2):
    with pytest.raises(ValueError, match="prompt 1 has 71 tokens, more than max_prompt_tokens=64"):
        generate(tiny_gpt2, ["ok", "x" * 70], progress=False)
    with pytest.raises(ValueError, match="prompt 0 has 51 tokens.*max_new_tokens=100.*n_ctx=128"):
        generate(tiny_gpt2, ["x" * 50], settings=settings_for(max_new_tokens=100),
                 progress=False)


def test_bad_decode_and_scorer(tiny_gpt2):
    batch = _batch(tiny_gpt2)
    with pytest.raises(ValueError, match=r"one seed per row \(4\), got None"):
        decode(tiny_gpt2, batch.tokens, batch.attention_mask, GenerationSettings())
    with pytest.raises(ValueError, match="scorer returned 1 scores for 2 texts"):
        generate(tiny_gpt2, PROMPTS[:2], settings=PRESETS["greedy"], scorer=lambda t: [0.5],
                 progress=False)


# --------------------------------------------------------------------------- files


def test_save_load_roundtrip(tiny_gpt2, tmp_path):
    df = generate(tiny_gpt2, PROMPTS + ["ünïcode ✓ \"quoted\"\nnewline"],
                  settings=settings_for(samples=2, max_new_tokens=5),
                  scorer=lambda t: [0.25] * len(t), progress=False)
    path = save_generations(df, tmp_path / "sub" / "gen.jsonl")
    back = load_generations(path)
    assert back.equals(df) and list(back.dtypes) == list(df.dtypes)


def test_failed_save_leaves_old_file_and_no_temp(tiny_gpt2, tmp_path):
    df = generate(tiny_gpt2, PROMPTS, settings=PRESETS["greedy"], progress=False)
    path = tmp_path / "gen.jsonl"
    save_generations(df, path)
    before = path.read_bytes()
    bad = df.copy()
    bad["extra"] = [0, 1, object(), 3]  # fails on the third line
    with pytest.raises(TypeError, match="cannot write object"):
        save_generations(bad, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["gen.jsonl"]
    with pytest.raises(TypeError):
        save_generations(bad, tmp_path / "new.jsonl")
    assert os.listdir(tmp_path) == ["gen.jsonl"]


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_generations(tmp_path / "none.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt_id": 0}\n{"prompt_id": 1, "pro\n')
    with pytest.raises(CorruptFileError, match="line 2 is not valid JSON"):
        load_generations(tmp_path / "bad.jsonl")
    (tmp_path / "cols.jsonl").write_text('{"prompt_id": 0}\n')
    with pytest.raises(CorruptFileError, match="lacks columns"):
        load_generations(tmp_path / "cols.jsonl")
    import pandas as pd
    with pytest.raises(ValueError, match="not a generations table"):
        save_generations(pd.DataFrame({"x": [1]}), tmp_path / "x.jsonl")


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_real_gemma_greedy_equals_tl_generate_and_strips_image_tokens():
    from steerinterp import load_model, load_texts

    model = load_model("gemma-3-270m", device="cpu")
    prompts = load_texts("toxic_prompts", n=3, seed=0)
    batch = _batch(model, prompts)
    new, _ = decode(model, batch.tokens, batch.attention_mask,
                    replace(GREEDY, max_new_tokens=10))
    assert torch.equal(new, _tl_generate(model, batch, 10))
    tok = model.tokenizer
    image = [tok.convert_tokens_to_ids(t) for t in ("<start_of_image>", "<end_of_image>")]
    text = tok.encode(" hello", add_special_tokens=False)
    row = torch.tensor([[image[0], *text, image[1], tok.eos_token_id, tok.pad_token_id]])
    assert decode_continuations(tok, row, torch.tensor([row.shape[1]])) == [" hello"]


@pytest.mark.slow
def test_real_gemma_steered_hf_generate_gives_our_tokens():
    """The benchmark's two steered loops (HF ``generate`` + pre-hook, our decode + ActAdd with
    the same vector) produce the same greedy tokens on the same weights."""
    from steerinterp import load_model
    from steerinterp.bench.generate import bench_generate

    result = bench_generate(load_model("gemma-3-270m", device="cpu"), n_prompts=2,
                            new_tokens=6, repeats=1, tl_layout=False)
    assert result["steer_site"] == "L9.resid_pre"
    assert result["hf_n_differ"] == 0 and result["n_differ"] == 0, result
    # No loop streams the weights faster than one bare pass over them.
    assert result["hf_steered_tok_per_s"] < result["weight_floor_tok_per_s"]


def test_weight_pass_counts_a_tied_unembedding_once():
    """``weight_pass_s`` multiplies by each distinct ``nn.Linear`` weight once: tying the
    unembedding to the embedding leaves one big matrix, not two."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from steerinterp.bench import generate as bench

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    hf = LlamaForCausalLM(cfg).eval()
    seen = []
    real = torch.nn.functional.linear
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "linear", lambda x, w: seen.append(w.shape) or real(x, w))
        assert bench.weight_pass_s(hf, batch=3, repeats=1) > 0
    # q, k, v, o, gate, up, down and lm_head, twice (the dropped warm-up and one timed round)
    assert len(seen) == 2 * 8 and seen.count(torch.Size([64, 16])) == 2
