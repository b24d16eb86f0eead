"""Sparse autoencoders for the SAE-overlap analysis: trained offline with SAELens, or loaded
from a SAELens pretrained release when the Hugging Face Hub is reachable.

No pretrained SAE ships offline (ASSETS.md, "Sparse autoencoders"), so :func:`train_sae` trains
a TopK SAE (no sparsity coefficient to tune, few dead features on short runs) with SAELens'
``LanguageModelSAETrainingRunner`` on the given model and built-in text, and caches it under
the steerinterp cache dir. Training text: ``wiki_ppl`` without the slices that evaluation reads
(its first 2000 texts, perplexity, and last 500, λ calibration; the largest sizes in
``evaluate.job``), ``wiki_target``, ``news``, ``reviews`` and the ``toxic`` fit set repeated to
~10% of the characters (never ``toxic_prompts``, the evaluation prompts), shuffled by ``seed``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
import shutil
import signal
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from transformer_lens import HookedTransformer

from ..assets import cache_dir as default_cache_dir
from ..io import default_mode, fingerprint, read_json, sha256_of, write_json
from ..provenance import model_info
from ..sites import Site

FORMAT = "steerinterp.sae/1"
MARKER = "steerinterp_sae.json"  # written last: a folder without it is not a finished SAE
_FILES = ("sae_weights.safetensors", "cfg.json")
# wiki_ppl slices read by evaluation (evaluate.job: [:n_ppl], [-n_calib:], largest sizes).
EVAL_PPL_HEAD, EVAL_CALIB_TAIL = 2000, 500
TOXIC_SHARE = 0.1  # of the built-in training text (by characters)
BUILTIN_TEXTS = "wiki+news+reviews+toxic/0.1"  # in the cache key: a new mix retrains
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaeSize:
    """Training budget of one size: tokens, dictionary width (× d_in), TopK k, batching."""

    tokens: int
    expansion: int
    k: int
    context: int
    batch_tokens: int
    buffer_contexts: int  # SAELens mixing buffer, in contexts: must hold several batches
    norm_batches: int  # batches used to estimate the activation-norm scale
    lr: float


SIZES = {
    # Seconds on a tiny model: for tests and smoke runs.
    "quick": SaeSize(tokens=2048, expansion=4, k=8, context=32, batch_tokens=128,
                     buffer_contexts=16, norm_batches=2, lr=1e-3),
    # The figures: ~6.5 min on 2 idle CPU cores for gemma-3-270m at L9.mlp_out (d_sae 2560 at
    # d_in 640; 300k tokens took 288 s). The LM forward up to the site is most of the cost,
    # so tokens, not steps, are the budget; contention on shared cores can double it.
    "real": SaeSize(tokens=400_000, expansion=4, k=32, context=128, batch_tokens=1024,
                    buffer_contexts=64, norm_batches=4, lr=1e-3),
}


def training_texts(seed: int = 0) -> list[str]:
    """Built-in training passages (module docstring), shuffled by ``seed``."""
    import random

    from ..data import load_texts

    ppl = load_texts("wiki_ppl")
    general = (ppl[EVAL_PPL_HEAD:len(ppl) - EVAL_CALIB_TAIL] + load_texts("wiki_target")
               + load_texts("news") + load_texts("reviews"))
    toxic = load_texts("toxic")
    # A dictionary that never saw toxic text has no features for it: repeat the short toxic
    # passages until they are ~TOXIC_SHARE of the characters (tokens are roughly alike).
    reps = max(1, round(TOXIC_SHARE * sum(map(len, general))
                        / ((1 - TOXIC_SHARE) * sum(map(len, toxic)))))
    texts = general + toxic * reps
    random.Random(seed).shuffle(texts)
    return texts


def train_sae(model: HookedTransformer, site: Site | str, size: str = "quick",
              texts: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
              seed: int = 0, progress: bool = True):
    """A SAELens TopK SAE (``sae_lens.SAE``) trained on ``model``'s activations at ``site``.

    ``size``: ``"quick"`` (seconds, tests) or ``"real"`` (minutes on CPU, figures); see
    :data:`SIZES`. ``texts``: training passages (default: :func:`training_texts`). The SAE is
    cached in ``cache_dir`` (default: ``<steerinterp cache>/sae``) under a folder keyed by model,
    site, size, seed and texts, and reused; a cached SAE that fails its checks is retrained.
    The first token of every context (BOS / attention sink) and special tokens are left out
    of training. Returned in eval mode on the model's device.
    """
    folder, key = _locate(model, site, size, texts, cache_dir, seed)
    site = Site.parse(site)
    sae = _load_cached(folder, key)
    if sae is None:
        _train_into(folder, model, site, SIZES[size], texts, seed, key, progress)
        sae = _load_cached(folder, key)
        if sae is None:
            raise RuntimeError(f"the SAE just trained in {folder} does not load back")
    return sae.to(model.cfg.device).eval()


def sae_folder(model: HookedTransformer, site: Site | str, size: str = "quick",
               texts: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
               seed: int = 0) -> Path:
    """Where :func:`train_sae` keeps (or will keep) the SAE for these arguments."""
    return _locate(model, site, size, texts, cache_dir, seed)[0]


def _locate(model: HookedTransformer, site, size: str, texts, cache_dir, seed: int
            ) -> tuple[Path, dict]:
    if size not in SIZES:
        raise ValueError(f"unknown SAE size {size!r}; sizes: {', '.join(SIZES)}")
    site = Site.parse(site).validate(model)
    if texts is not None and (isinstance(texts, str) or not texts):
        raise ValueError("texts must be a non-empty list of strings (or None for built-ins)")
    key = _key(model, site, size, seed, texts)
    return _folder(cache_dir, model, site, size, seed, key), key


def _key(model: HookedTransformer, site: Site, size: str, seed: int,
         texts: Sequence[str] | None) -> dict:
    return {"format": FORMAT, "model": model_info(model).to_dict(), "site": str(site),
            "width": site.width(model), "size": size, "settings": asdict(SIZES[size]),
            "seed": seed,
            "texts": BUILTIN_TEXTS if texts is None else fingerprint(list(texts))}


def _folder(root, model: HookedTransformer, site: Site, size: str, seed: int,
            key: dict) -> Path:
    root = Path(root) if root is not None else default_cache_dir() / "sae"
    name = model_info(model).name.replace("/", "__")
    return root / name / str(site) / f"{size}-seed{seed}-{fingerprint(key)[:12]}"


def _load_cached(folder: Path, key: dict):
    """The SAE in ``folder`` if it is complete and matches ``key``; ``None`` otherwise."""
    from sae_lens import SAE

    if not (folder / MARKER).exists():
        return None
    try:
        record = read_json(folder / MARKER, "SAE cache record")
        if record.get("key") != key:
            raise ValueError("it was trained under other settings")
        for name, sha in record["files"].items():
            if sha256_of(folder / name) != sha:
                raise ValueError(f"{name} does not match its recorded sha256")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sae = SAE.load_from_disk(folder)
        if sae.cfg.d_in != key["width"]:
            raise ValueError(f"its d_in {sae.cfg.d_in} is not the site width {key['width']}")
        return sae
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        log.warning("cached SAE at %s is unusable (%s); retraining it", folder, err)
        return None


def _train_into(folder: Path, model: HookedTransformer, site: Site, size: SaeSize,
                texts: Sequence[str] | None, seed: int, key: dict, progress: bool) -> None:
    """Train in a temporary folder next to ``folder``, then move it into place (atomic)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".train-{folder.name}-", dir=folder.parent))
    os.chmod(tmp, default_mode(directory=True))  # it becomes the SAE folder
    try:
        passages = training_texts(seed) if texts is None else list(texts)
        _run_sae_lens(model, site, size, passages, seed, tmp, progress)
        files = {name: sha256_of(tmp / name) for name in _FILES}
        write_json(tmp / MARKER, {"key": key, "files": files})
        _replace_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(parent: Path, max_age_s: float = 6 * 3600) -> None:
    # A killed run (SIGKILL, power loss) leaves its temporary folder behind; one untouched
    # for hours is dead, while a younger one may belong to a run in progress.
    for old in [*parent.glob(".train-*"), *parent.glob(".old-*")]:
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)


def _replace_dir(src: Path, dest: Path) -> None:
    # os.replace cannot overwrite a non-empty directory: move a stale copy aside first.
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{dest.name}-", dir=dest.parent))
        os.replace(dest, old / "sae")
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(src, dest)
    except OSError:
        if not (dest / MARKER).exists():  # a concurrent run that finished first is fine
            raise


def sae_quality(model: HookedTransformer, sae, texts: list[str], site: Site | str | None = None,
                max_tokens: int = 64) -> dict:
    """How well ``sae`` reconstructs ``model``'s activations at ``site`` (default: its hook) on
    ``texts`` (every token after the first): ``fve`` (fraction of variance explained),
    ``mse``, ``l0`` (mean active latents per token), ``dead_share`` (latents never active
    here) and ``n_tokens``. Read it on text the SAE was not trained on."""
    import torch

    from ..collection import collect
    from .sae_overlap import encode, resolve_site

    site = resolve_site(model, sae, site)
    acts = collect(model, texts, [site], pool="none", max_tokens=max_tokens,
                   progress=False)[site].float()
    f = encode(sae, model, acts)
    with torch.inference_mode():
        recon = sae.decode(f.to(sae.W_dec.device)).float().cpu().reshape(acts.shape)
    err = (recon - acts).pow(2).sum(-1)
    total = (acts - acts.mean(0)).pow(2).sum(-1)
    return {"site": str(site), "n_tokens": int(acts.shape[0]),
            "fve": float(1 - err.sum() / total.sum()), "mse": float(err.mean() / acts.shape[1]),
            "l0": float((f > 0).sum(-1).float().mean()),
            "dead_share": float(((f > 0).sum(0) == 0).float().mean())}


def runner_config(model: HookedTransformer, site: Site, size: SaeSize, seed: int, out: Path):
    """The SAELens runner config: no W&B, no checkpoints, output to ``out``."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig, TopKTrainingSAEConfig

    d_in = site.width(model)
    d_sae = size.expansion * d_in
    bos = model.cfg.default_prepend_bos
    sep = "bos" if bos else ("eos" if model.tokenizer.eos_token_id is not None else None)
    return LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=min(size.k, d_sae),
                                  normalize_activations="expected_average_only_in",
                                  device=str(model.cfg.device)),
        model_name=model_info(model).name, hook_name=site.hook_name, dataset_path="",
        streaming=False, is_dataset_tokenized=False, context_size=size.context,
        training_tokens=size.tokens, train_batch_size_tokens=size.batch_tokens,
        store_batch_size_prompts=8, n_batches_in_buffer=size.buffer_contexts,
        # Position 0 is BOS or, without BOS, an attention sink hundreds of times larger than
        # other tokens; separators (BOS/EOS) between passages are special tokens.
        seqpos_slice=(1, None), exclude_special_tokens=True, prepend_bos=bos,
        sequence_separator_token=sep, lr=size.lr, lr_decay_steps=size.tokens
        // size.batch_tokens // 5, n_batches_for_norm_estimate=size.norm_batches, seed=seed,
        device=str(model.cfg.device), dtype="float32", model_from_pretrained_kwargs={},
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, n_checkpoints=0,
        output_path=str(out), verbose=False)


def _run_sae_lens(model: HookedTransformer, site: Site, size: SaeSize, passages: list[str],
                  seed: int, out: Path, progress: bool) -> None:
    import datasets
    from sae_lens import LanguageModelSAETrainingRunner

    cfg = runner_config(model, site, size, seed, out)
    data = datasets.Dataset.from_dict({"text": passages})
    with _quiet(progress), _restore_signals():
        LanguageModelSAETrainingRunner(cfg, override_dataset=data, override_model=model).run()


@contextlib.contextmanager
def _quiet(progress: bool):
    """Silence SAELens' expected warnings (overridden model/dataset, untokenized text) and,
    with ``progress=False``, its training progress bar (which it never disables itself)."""
    from sae_lens.training import activation_scaler, activations_store, sae_trainer
    from tqdm.auto import tqdm

    logger = logging.getLogger("sae_lens")
    level = logger.level
    logger.setLevel(logging.ERROR)
    modules = (sae_trainer, activation_scaler, activations_store)
    bars = [m.tqdm for m in modules]
    if not progress:
        for m in modules:
            m.tqdm = partial(tqdm, disable=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"sae_lens\..*")
            yield
    finally:
        logger.setLevel(level)
        for m, bar in zip(modules, bars):
            m.tqdm = bar


@contextlib.contextmanager
def _restore_signals():
    # The runner installs SIGINT/SIGTERM handlers for its checkpointing and leaves them in
    # place; put the caller's back (possible only in the main thread).
    saved = {}
    with contextlib.suppress(ValueError):
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)


def load_sae(release: str, sae_id: str, device: str = "cpu"):
    """A SAELens pretrained SAE (``SAE.from_pretrained(release, sae_id)``); needs the Hub or a
    local Hugging Face cache holding it, and says so clearly otherwise."""
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from ..models import _hub_offline, _hub_reachable

    releases = get_pretrained_saes_directory()
    if release not in releases:
        near = [r for r in releases if release.lower() in r.lower()][:10]
        raise ValueError(f"unknown SAELens release {release!r}"
                         + (f"; similar: {', '.join(near)}" if near else ""))
    ids = releases[release].saes_map
    if sae_id not in ids:
        raise ValueError(f"release {release!r} has no SAE {sae_id!r}; e.g. "
                         f"{', '.join(list(ids)[:8])}")
    online = _hub_reachable()
    try:
        with _hub_offline() if not online else contextlib.nullcontext():
            return SAE.from_pretrained(release, sae_id, device=device)
    except Exception as err:  # hub/cache failures come as OSError, HTTP or hub-specific errors
        where = "" if online else " (the Hugging Face Hub is unreachable or HF_HUB_OFFLINE is set)"
        raise RuntimeError(f"cannot load SAE {release}/{sae_id}{where}: {err}. Offline, train "
                           "one instead: steerinterp.analysis.sae_train.train_sae(model, site)"
                           ) from err
