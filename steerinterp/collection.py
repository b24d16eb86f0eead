"""``collect()``: run texts through a model and keep pooled activations at chosen sites."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from jaxtyping import Bool, Float
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from .hooks import last_layer, recording
from .io import (CorruptFileError, ensure_writable_dir, fingerprint, load_tensors, read_json,
                 save_tensors, write_json)
from .sites import Site, parse_sites
from .store import (_LENGTHS, _TOKENS, FORMAT, POOLS, ActivationStore, StoreError, split_rows,
                    build_meta)
from .tokens import check_texts, pad_left, token_ids


def collect(model: HookedTransformer, texts: Sequence[str], sites, pool: str = "mean",
            batch_size: int = 16, max_tokens: int = 128, path: str | Path | None = None,
            skip_first: bool = True, progress: bool = True) -> ActivationStore:
    """Pooled activations of ``texts`` at ``sites`` (a list of Sites or a spec like ``"all.mlp_out"``).

    ``pool``: ``mean`` / ``max`` / ``last`` over a text's tokens, or ``none`` for per-token rows.
    Padding never enters a pooled value. ``skip_first`` (default) leaves the first token (BOS, or
    on models without BOS the first word, which carries attention-sink activations hundreds of
    times larger than elsewhere) out of pooling. The forward pass stops after the last needed
    layer. With ``path``, each batch is written as a shard when done; re-running with the same
    arguments resumes, and a finished store at ``path`` is simply loaded.
    """
    texts = validate_texts(texts)
    if pool not in POOLS:
        raise StoreError(f"unknown pooling {pool!r}; use one of {', '.join(POOLS)}")
    if batch_size < 1:
        raise StoreError(f"batch_size must be at least 1, got {batch_size}")
    sites = sorted(parse_sites(sites, model))
    ids = token_ids(model, texts, max_tokens)
    validate_lengths(ids, texts, skip_first, max_tokens)
    meta = build_meta(model, texts, sites, pool, max_tokens, skip_first, batch_size)
    # Longest first: batches of similar length waste little on padding, and an out-of-memory
    # error shows up in the first batch instead of at the end.
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if path is None:
        shards = [_run_batch(model, [ids[i] for i in b], sites, pool, skip_first)
                  for b in tqdm(batches, desc="collect", disable=not progress)]
        return _in_memory(meta, sites, pool, batches, shards)
    return _collect_to_disk(model, Path(path), meta, ids, sites, batches, progress)


def validate_texts(texts: Sequence[str]) -> list[str]:
    """:func:`~steerinterp.tokens.check_texts` with the store's error type."""
    return check_texts(texts, error=StoreError)


def validate_lengths(ids: list[list[int]], texts: list[str], skip_first: bool,
                   max_tokens: int) -> None:
    need = 2 if skip_first else 1
    if skip_first and max_tokens < 2:
        raise StoreError("max_tokens must be at least 2 when the first token is skipped")
    short = [i for i, x in enumerate(ids) if len(x) < need]
    if short:
        i = short[0]
        raise StoreError(f"{len(short)} text(s) have no token left to pool after the first one "
                         f"(e.g. #{i}: {texts[i][:40]!r}); drop them or pass skip_first=False")


@torch.inference_mode()
def _run_batch(model: HookedTransformer, ids: list[list[int]], sites: list[Site], pool: str,
               skip_first: bool) -> dict[str, torch.Tensor]:
    """One forward pass, pooled inside the hooks so only ``[batch, d]`` per site is kept."""
    batch = pad_left(model, ids, skip_first)
    out: dict[str, torch.Tensor] = {}

    def read(site: Site, units: torch.Tensor) -> None:
        out[str(site)] = pool_tokens(units.float(), batch.pool_mask, pool).cpu()

    with recording(model, sites, read):
        model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=last_layer(sites))
    lengths = batch.pool_mask.sum(1).cpu()
    out[_LENGTHS] = lengths
    if pool == "none":
        out[_TOKENS] = batch.tokens[batch.pool_mask].cpu()
    return out


def pool_tokens(acts: Float[torch.Tensor, "batch pos d"], mask: Bool[torch.Tensor, "batch pos"],
                pool: str) -> torch.Tensor:
    """Pool over the positions in ``mask`` (``none``: the masked rows, text by text)."""
    m = mask.unsqueeze(-1)
    if pool == "mean":
        return torch.where(m, acts, 0.0).sum(1) / m.sum(1)
    if pool == "max":
        return torch.where(m, acts, float("-inf")).amax(1)
    if pool == "last":
        return acts[:, -1]  # left padding: the last position is every text's last token
    return acts[mask]


def _in_memory(meta: dict, sites: list[Site], pool: str, batches: list[list[int]],
               shards: list[dict[str, torch.Tensor]]) -> ActivationStore:
    """Concatenate batch results and restore the caller's text order."""
    acts = {}
    store = ActivationStore(dict(meta, shards=[]))
    keys = [str(s) for s in sites] + [_LENGTHS] + ([_TOKENS] if pool == "none" else [])
    for key in keys:
        parts = []
        for examples, shard in zip(batches, shards):
            parts.extend(zip(examples, split_rows(shard, key, pool)))
        parts.sort(key=lambda p: p[0])
        acts[key] = torch.cat([t for _, t in parts])
    store._acts = {Site.parse(k) if not k.startswith("__") else k: v for k, v in acts.items()}
    store._lengths = acts[_LENGTHS]
    return store


def _collect_to_disk(model: HookedTransformer, path: Path, meta: dict, ids: list[list[int]],
                     sites: list[Site], batches: list[list[int]], progress: bool) -> ActivationStore:
    """Shard-per-batch collection that resumes; pooled shards are merged into one at the end.
    One writer per store folder: a second process is refused while the first holds the lock."""
    ensure_writable_dir(path)
    with _writer_lock(path):
        return _collect_locked(model, path, meta, ids, sites, batches, progress)


@contextmanager
def _writer_lock(path: Path):
    """An exclusive lock on the store folder (``filelock``), naming the holder's pid."""
    pid_file = path / ".writer.pid"
    lock = FileLock(str(path / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = pid_file.read_text().strip() if pid_file.exists() else "unknown"
        raise StoreError(f"store {path} is being written by another process (pid {holder}); "
                         "wait for it, or collect into another path") from None
    try:
        pid_file.write_text(str(os.getpid()))
        yield
    finally:
        pid_file.unlink(missing_ok=True)
        lock.release()


def _finished_parts(path: Path, shards: dict) -> dict:
    """The parts an interrupted run finished, less any that are damaged on disk (dropped, with
    a warning, and recomputed) so that the merge never reads a broken file."""
    kept = {}
    for name, shard in shards.items():
        try:
            load_tensors(path / name, shard["sha256"], "collection part")
            kept[name] = shard
        except (CorruptFileError, FileNotFoundError) as err:
            warnings.warn(f"{err}; dropping {name} and recomputing its batch", stacklevel=3)
            (path / name).unlink(missing_ok=True)
    return kept


def _collect_locked(model: HookedTransformer, path: Path, meta: dict, ids: list[list[int]],
                    sites: list[Site], batches: list[list[int]], progress: bool
                    ) -> ActivationStore:
    key = fingerprint({k: v for k, v in meta.items() if k != "versions"})
    if (path / "meta.json").exists():
        done = read_json(path / "meta.json", "activation store manifest")
        if done.get("fingerprint") != key:
            raise StoreError(f"{path} already holds a different store (other model, texts, "
                             "sites or settings); use another path or delete it")
        return ActivationStore.load(path, model)
    progress_file = path / "progress.json"
    state = read_json(progress_file, "collection progress") if progress_file.exists() else {}
    if state and state.get("fingerprint") != key:
        raise StoreError(f"{path} holds an unfinished collection with other arguments; "
                         "use another path or delete it")
    state = {"fingerprint": key, "shards": _finished_parts(path, state.get("shards", {}))}
    pool, skip_first = meta["pool"], meta["skip_first"]
    for b, examples in enumerate(tqdm(batches, desc="collect", disable=not progress)):
        name = f"part-{b:05d}.safetensors"
        if name in state["shards"]:
            continue  # finished before an interruption
        result = _run_batch(model, [ids[i] for i in examples], sites, pool, skip_first)
        sha = save_tensors(path / name, result, {"format": FORMAT})
        state["shards"][name] = {"file": name, "sha256": sha, "examples": examples}
        write_json(progress_file, state)
    meta = dict(meta, fingerprint=key, shards=list(state["shards"].values()))
    if pool == "none":
        write_json(path / "meta.json", meta)  # per-token stores keep their parts as shards
    else:
        # Merge into one shard; meta.json is written last, so parts are deleted only after the
        # merged store is complete and an interruption never loses finished work.
        ActivationStore(meta, path=path).save(path)
        for part in state["shards"]:
            (path / part).unlink(missing_ok=True)
    progress_file.unlink(missing_ok=True)
    return ActivationStore.load(path, model)
