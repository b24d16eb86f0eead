"""Activation stores: pooled (or per-token) activations per :class:`~steerinterp.sites.Site`.

``collect(model, texts, sites)`` runs batched, left-padded forward passes that stop after the
last needed layer, pools inside the hook (so memory is bounded by the pooled result, never by
tokens × layers × d), and optionally writes shards to disk as it goes so an interrupted job
resumes. ``ActivationStore.save/load`` use safetensors + JSON with checksums; a store remembers
the model name and weight-processing flags it came from and refuses a different model.

On-disk layout (a directory)::

    meta.json          manifest: model, flags, pooling, sites, texts, shards (+ sha256), versions
    shard-00000.safetensors ...   tensors keyed by site string; pooled stores have one shard
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer

from .io import (CorruptFileError, ensure_writable_dir, load_tensors, read_json, save_tensors,
                 versions, write_json)
from .provenance import check_provenance, model_info
from .sites import Site

FORMAT = "steerinterp.store/1"
POOLS = ("mean", "max", "last", "none")
_LENGTHS, _TOKENS = "__lengths__", "__token_ids__"


class StoreError(ValueError):
    """A store that cannot be used as asked (wrong model, missing site, bad arguments)."""


class ActivationStore:
    """Activations of ``n`` texts at a set of sites, with provenance.

    Pooled stores: ``store[site]`` is ``[n, d]`` float32 on CPU. Per-token stores
    (``pool="none"``): ``store[site]`` is ``[tokens, d]`` with ``store.lengths[i]`` rows per text,
    loaded lazily site by site from the shards.
    """

    def __init__(self, meta: dict, acts: dict[Site, torch.Tensor] | None = None,
                 lengths: torch.Tensor | None = None, path: Path | None = None) -> None:
        self.meta = meta
        self._acts = dict(acts or {})
        self._lengths = lengths
        self.path = Path(path) if path is not None else None

    # -- descriptors -------------------------------------------------------------------------
    @property
    def sites(self) -> list[Site]:
        return [Site.parse(s) for s in self.meta["sites"]]

    @property
    def pool(self) -> str:
        return self.meta["pool"]

    @property
    def n(self) -> int:
        return int(self.meta["n"])

    @property
    def model_name(self) -> str:
        return self.meta["model"]["name"]

    @property
    def texts(self) -> list[str]:
        return list(self.meta["texts"])

    @property
    def lengths(self) -> torch.Tensor:
        """Pooled tokens per text (per-token stores: rows per text in ``store[site]``)."""
        if self._lengths is None:
            try:
                self._lengths = self._load_site(_LENGTHS)
            except CorruptFileError:
                if self.pool == "none":
                    raise  # a per-token store cannot be read without them: damaged
                raise StoreError(f"store {self.path} was saved without per-text token counts "
                                 "(an older pooled store); collect it again to get them") from None
        return self._lengths

    def __len__(self) -> int:
        return self.n

    def __contains__(self, site: Site | str) -> bool:
        return str(Site.parse(site)) in self.meta["sites"]

    def __getitem__(self, site: Site | str) -> Float[torch.Tensor, "n d"]:
        site = Site.parse(site)
        if site not in self:
            raise StoreError(f"site {site} is not in this store (it has: "
                             f"{', '.join(self.meta['sites'])})")
        if site not in self._acts:
            self._acts[site] = self._load_site(str(site))
        return self._acts[site]

    def __repr__(self) -> str:
        return (f"ActivationStore(model={self.model_name!r}, n={self.n}, pool={self.pool!r}, "
                f"sites={len(self.meta['sites'])})")

    # -- provenance ----------------------------------------------------------------------------
    def check_model(self, model: HookedTransformer) -> None:
        """Refuse a model other than the one this store was collected on."""
        check_provenance(self.meta["model"], self.meta["widths"], model, "store", "collected",
                         StoreError)

    def summary(self) -> pd.DataFrame:
        """One row per site: width, rows, mean, std, mean |x|, and the count of NaN/inf values."""
        rows = []
        for site in self.sites:
            x = self[site]
            finite = torch.isfinite(x)
            xf = torch.where(finite, x, torch.zeros_like(x))
            rows.append({"site": str(site), "layer": site.layer, "point": site.point,
                         "width": x.shape[1], "rows": x.shape[0], "mean": xf.mean().item(),
                         "std": xf.std().item(), "mean_abs": xf.abs().mean().item(),
                         "nonfinite": int((~finite).sum())})
        return pd.DataFrame(rows)

    # -- disk ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write this store to directory ``path`` atomically (tensors first, manifest last)."""
        path = ensure_writable_dir(Path(path))
        tensors = {str(s): self[s] for s in self.sites}
        if self.pool != "none" and (self._lengths is not None or self.path is not None):
            try:  # pooled: token counts are metadata, kept when this store has them
                tensors[_LENGTHS] = self.lengths
            except StoreError:
                pass
        if self.pool == "none":
            tensors[_LENGTHS] = self.lengths
            tensors[_TOKENS] = self._load_site(_TOKENS) if self.path else self._acts[_TOKENS]
        sha = save_tensors(path / "shard-00000.safetensors", tensors, {"format": FORMAT})
        meta = dict(self.meta, shards=[{"file": "shard-00000.safetensors", "sha256": sha,
                                        "examples": list(range(self.n))}])
        write_json(path / "meta.json", meta)
        self.path, self.meta = path, meta
        return path

    @classmethod
    def load(cls, path: str | Path, model: HookedTransformer | None = None) -> ActivationStore:
        """Open the store at ``path``; check it against ``model`` when given.

        Pooled stores are read eagerly (checksums verified); per-token stores lazily.
        """
        path = Path(path)
        if not (path / "meta.json").exists():
            raise FileNotFoundError(f"no activation store at {path} (meta.json is missing)")
        meta = read_json(path / "meta.json", "activation store manifest")
        if meta.get("format") != FORMAT or "shards" not in meta:
            raise CorruptFileError(f"{path}/meta.json is not a steerinterp store manifest "
                                   f"(format {meta.get('format')!r}, expected {FORMAT!r})")
        store = cls(meta, path=path)
        if store.pool != "none":
            for site in store.sites:
                store[site]  # verify every shard now rather than fail halfway through a fit
        if model is not None:
            store.check_model(model)
        return store

    def _load_site(self, key: str) -> torch.Tensor:
        """Gather ``key`` from every shard and restore the original text order."""
        if self.path is None:
            if key == _LENGTHS:
                raise StoreError("this in-memory store has no per-token lengths")
            return self._acts[key]
        parts: list[tuple[int, torch.Tensor]] = []
        for shard in self.meta["shards"]:
            tensors = load_tensors(self.path / shard["file"], shard["sha256"],
                                   f"activation store shard ({self.path})")
            if key not in tensors:
                raise CorruptFileError(f"shard {shard['file']} of {self.path} lacks {key}")
            chunks = split_rows(tensors, key, self.pool)
            parts.extend(zip(shard["examples"], chunks))
        parts.sort(key=lambda p: p[0])
        return torch.cat([t for _, t in parts]) if parts else torch.empty(0)


def split_rows(tensors: dict[str, torch.Tensor], key: str, pool: str) -> list[torch.Tensor]:
    """Rows of one shard split per text (per-token stores hold several rows per text)."""
    x = tensors[key]
    if pool != "none" or key == _LENGTHS:
        return list(x.unsqueeze(1) if x.dim() == 1 else x.split(1))
    return list(x.split(tensors[_LENGTHS].tolist()))


def build_meta(model: HookedTransformer, texts: list[str], sites: list[Site], pool: str,
               max_tokens: int, skip_first: bool, batch_size: int) -> dict:
    """The manifest of a store before any activation is computed (also its resume key)."""
    info = model_info(model)
    tok = model.tokenizer
    return {
        "format": FORMAT, "model": info.to_dict(), "pool": pool, "n": len(texts),
        "sites": [str(s) for s in sites], "widths": {str(s): s.width(model) for s in sites},
        "max_tokens": max_tokens, "skip_first": skip_first, "batch_size": batch_size,
        "tokenizer": {"name": getattr(tok, "name_or_path", None), "padding_side": "left",
                      "prepend_bos": bool(model.cfg.default_prepend_bos)},
        "versions": versions(), "texts": list(texts),
    }
