"""The ``Steerer`` base: one interface for every method, a registry, and safe save/load.

A steerer is an ``nn.Module`` with a small frozen config. ``fit(model, source, target)`` takes
texts (collected with the method's own pooling) or :class:`~steerinterp.store.ActivationStore`s;
``steer(acts, site)`` is a pure function of one site's activations (identity at strength 0,
never edits its input); ``fwd_hooks()`` turns it into TransformerLens hooks, attached only by
:func:`steerinterp.steer.apply.steered`. On disk: ``config.json`` (method, config, provenance)
and ``state.safetensors`` — no pickles.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from filelock import FileLock
from jaxtyping import Float
from torch import nn
from transformer_lens import HookedTransformer

from ..io import CorruptFileError, load_tensors, read_json, save_tensors, versions, write_json
from ..provenance import check_provenance, model_info
from .record import FitRecord
from ..sites import (Site, SiteError, default_sites, from_units, parse_sites, site_device,
                     to_units)
from ..store import ActivationStore

FORMAT = "steerinterp.steerer/1"
REGISTRY: dict[str, type[Steerer]] = {}


class SteerError(ValueError):
    """A steerer used in a way that cannot give a meaningful result."""


@dataclass(frozen=True)
class SteerConfig:
    """Options every method shares. ``sites=None`` means the method's defaults for the model."""

    sites: tuple[str, ...] | None = None
    strength: float = 1.0
    pool: str | None = None  # None: the method's own pooling
    max_tokens: int = 128
    batch_size: int = 16


def register(cls: type[Steerer]) -> type[Steerer]:
    """Class decorator: make a method available to :func:`make` and :func:`load_steerer`."""
    REGISTRY[cls.method] = cls
    return cls


def available() -> list[str]:
    """Names of the registered methods."""
    return sorted(REGISTRY)


def make(name: str, **config) -> Steerer:
    """An unfitted steerer of method ``name`` with ``config`` options."""
    if name not in REGISTRY:
        raise SteerError(f"unknown method {name!r}; available: {', '.join(available())}")
    cls = REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise SteerError(f"unknown option(s) {unknown} for {name}; options: {sorted(fields)}")
    sites = config.get("sites")
    if isinstance(sites, str):
        sites = sites.split(",")
    if sites is not None:
        # Kept as a spec ("all.mlp_out" needs the model); resolved and validated in fit().
        config["sites"] = tuple(str(s).strip() for s in sites)
    return cls(cls.Config(**config))


class Steerer(nn.Module):
    """Base class. Subclasses set ``method``, ``Config``, ``default_pool`` and implement
    ``_fit(model, source, target)`` and ``steer(acts, site, strength)``."""

    method: ClassVar[str] = "base"
    Config: ClassVar[type[SteerConfig]] = SteerConfig
    default_pool: ClassVar[str] = "mean"
    strength_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    needs_target: ClassVar[bool] = True

    def __init__(self, config: SteerConfig | None = None, *, check: bool = True) -> None:
        """``check=False``: a wrapper (DSAS, a restricted view) whose range depends on state it
        sets after this call; it checks the strength itself once that state exists."""
        super().__init__()
        self.config = config if config is not None else self.Config()
        if check:
            self.check_strength(self.config.strength)
        self.tensors = nn.ParameterDict()
        self.provenance: FitRecord | None = None

    # -- per-site tensors ------------------------------------------------------------------
    def set_tensor(self, site: Site, name: str, value: torch.Tensor,
                   trainable: bool = False) -> None:
        self.tensors[site.key(name)] = nn.Parameter(
            value.detach().float().clone(), requires_grad=trainable)

    def tensor(self, site: Site, name: str) -> torch.Tensor | None:
        key = site.key(name)
        return self.tensors[key] if key in self.tensors else None

    @property
    def sites(self) -> list[Site]:
        return list(self.provenance.sites) if self.provenance is not None else []

    @property
    def fitted(self) -> bool:
        return self.provenance is not None

    @property
    def pool(self) -> str:
        return self.config.pool or self.default_pool

    # -- fitting -------------------------------------------------------------------------------
    def resolve_sites(self, model: HookedTransformer) -> list[Site]:
        if self.config.sites is None:
            return default_sites(model, self.method)
        return sorted(parse_sites(list(self.config.sites), model))

    def fit(self, model: HookedTransformer, source, target=None, *, control=None) -> Steerer:
        """Fit on ``source`` (behaviour to remove) and ``target`` (behaviour wanted): lists of
        texts or ActivationStores. ``control`` (neutral text a gate must leave alone) is read
        by the methods that gate (DSAS) and ignored by the others, so every method is fitted
        the same way. Returns ``self``."""
        t0 = time.perf_counter()
        sites = self.resolve_sites(model)
        if self.needs_target and target is None:
            raise SteerError(f"{self.method} needs both a source and a target set")
        src = self.as_store(model, source, sites, "source")
        tgt = self.as_store(model, target, sites, "target") if target is not None else None
        self._fit(model, src, tgt, sites)
        self.record_provenance(model, sites, src.n, tgt.n if tgt is not None else 0, t0)
        return self

    def record_provenance(self, model: HookedTransformer, sites: list[Site], n_source: int,
                          n_target: int, t0: float) -> None:
        """What this steerer was fitted on: checked on load and on attach."""
        self.provenance = FitRecord(
            model=model_info(model).to_dict(), sites=tuple(sites),
            widths={s: s.width(model) for s in sites}, pool=self.pool, n_source=n_source,
            n_target=n_target, fit_seconds=time.perf_counter() - t0, versions=versions())

    def as_store(self, model: HookedTransformer, data, sites: list[Site],
                 role: str) -> ActivationStore:
        """Texts → a store collected with this method's pooling; a store → checked."""
        if isinstance(data, ActivationStore):
            store = data
            store.check_model(model)
            missing = [str(s) for s in sites if s not in store]
            if missing:
                raise SteerError(f"{role} store lacks site(s) {missing} that {self.method} "
                                 f"steers; collect them or pass sites=")
            if store.pool != self.pool:
                raise SteerError(f"{role} store was pooled with {store.pool!r} but "
                                 f"{self.method} uses {self.pool!r}; recollect or pass pool=")
        else:
            from ..collection import collect
            store = collect(model, data, sites, pool=self.pool, max_tokens=self.config.max_tokens,
                            batch_size=self.config.batch_size, progress=False)
        if store.n == 0:
            raise SteerError(f"{role} set is empty")
        for site in sites:
            bad = int((~torch.isfinite(store[site])).sum())
            if bad:
                raise SteerError(f"{role} activations at {site} contain {bad} NaN/inf values")
        return store

    def _fit(self, model: HookedTransformer, source: ActivationStore,
             target: ActivationStore | None, sites: list[Site]) -> None:
        raise NotImplementedError

    # -- applying --------------------------------------------------------------------------
    def check_strength(self, strength: float) -> float:
        lo_hi = self.strength_range
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) \
                or not math.isfinite(strength):
            raise SteerError(f"strength must be a finite number, got {strength!r}")
        if lo_hi is not None and not lo_hi[0] <= strength <= lo_hi[1]:
            raise SteerError(f"strength {strength} is outside {self.method}'s range "
                             f"[{lo_hi[0]}, {lo_hi[1]}]")
        return float(strength)

    def steer(self, acts: Float[torch.Tensor, "... d"], site: Site,
              strength: float | None = None) -> Float[torch.Tensor, "... d"]:
        """Steered activations at ``site`` (float32 in, float32 out, input untouched)."""
        raise NotImplementedError

    def fwd_hooks(self, strength: float | None = None) -> list[tuple[str, object]]:
        """``(hook_name, fn)`` pairs for TransformerLens; use through ``steered()``."""
        if not self.fitted:
            raise SteerError(f"this {self.method} steerer is not fitted; call .fit() first")
        lam = self.check_strength(self.config.strength if strength is None else strength)
        return [(site.hook_name, self._hook(site, lam)) for site in self.sites]

    def _hook(self, site: Site, lam: float):
        def hook(acts: torch.Tensor, hook) -> torch.Tensor:
            # Compute in float32 and hand back a new tensor in the model's dtype: no in-place
            # edits, so autograd through the hook (LinEAS, DSAS training) stays correct.
            out = self.steer(to_units(site, acts).float(), site, lam)
            return from_units(site, out, acts).to(acts.dtype)
        return hook

    def place(self, model: HookedTransformer) -> Steerer:
        """Put each site's tensors on the device of that site's block (a model loaded with
        ``n_devices > 1`` has its blocks on several GPUs), the rest on the model's device."""
        if getattr(model.cfg, "n_devices", 1) <= 1:
            return self.to(model.cfg.device)
        for name, p in [*self.named_parameters(), *self.named_buffers()]:
            try:
                site, _ = Site.from_key(name.rpartition(".")[2])
                device = site_device(model, site)
            except SiteError:
                device = torch.device(model.cfg.device)
            if p.device != device:  # swapped in place: an optimiser holding p still sees it
                moved = p.detach().to(device)
                torch.utils.swap_tensors(p, nn.Parameter(moved, p.requires_grad)
                                         if isinstance(p, nn.Parameter) else moved)
        return self

    def check_model(self, model: HookedTransformer) -> None:
        """Refuse a model other than the one this steerer was fitted on."""
        if not self.fitted:
            raise SteerError(f"this {self.method} steerer is not fitted; call .fit() first")
        widths = {str(s): w for s, w in self.provenance.widths.items()}
        check_provenance(self.provenance.model, widths, model, f"{self.method} steerer",
                         "fitted", SteerError)

    # -- disk ------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """JSON-able state beyond tensors (subclasses may extend)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def save(self, path: str | Path) -> Path:
        """Write ``state.safetensors`` then ``config.json`` (last, so it names a finished file)."""
        if not self.fitted:
            raise SteerError("cannot save an unfitted steerer")
        path = Path(path)
        tensors = {f"{k}": v.detach() for k, v in self.tensors.items()}
        sha = save_tensors(path / "state.safetensors", tensors, {"format": FORMAT})
        write_json(path / "config.json", {
            "format": FORMAT, "method": self.method, "config": asdict(self.config),
            "provenance": self.provenance.to_dict(), "extra": self.extra_state(),
            "state_sha256": sha,
            "tensors": sorted(tensors)})
        return path


def check_sites(requested, available: Sequence[Site], who: str) -> list[Site]:
    """``requested`` (site strings or Sites; ``None``: all) as Sites, each one ``available``;
    otherwise a ValueError naming the site and what ``who`` (e.g. "the dsas steerer") has."""
    if requested is None:
        return list(available)
    if isinstance(requested, (str, Site)):
        requested = [requested]
    out = [Site.parse(s) for s in requested]
    missing = [str(s) for s in out if s not in available]
    if missing:
        raise ValueError(f"site(s) {', '.join(missing)} are not steered by {who}; its sites: "
                         f"{', '.join(str(s) for s in available)}")
    return out


def load_or_fit(path: str | Path, model: HookedTransformer,
                fit: Callable[[], Steerer]) -> Steerer:
    """The steerer saved at ``path`` when it loads and matches ``model``; otherwise ``fit()``'s,
    saved there (replacing a damaged or foreign save). How long jobs resume their fits.

    Locked across processes: of two workers that need the same steerer, one fits it and the
    other loads that fit."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path / ".lock")):
        if (path / "config.json").exists():
            try:
                return load_steerer(path, model)
            except (CorruptFileError, SteerError, FileNotFoundError, ValueError):
                pass  # damaged, or from another model: fit again (the save replaces it)
        steerer = fit()
        steerer.save(path)
    return steerer


def load_steerer(path: str | Path, model: HookedTransformer | None = None) -> Steerer:
    """Restore any registered steerer saved with :meth:`Steerer.save`; check it against
    ``model`` when given."""
    path = Path(path)
    meta = read_json(path / "config.json", "steerer config")
    if not isinstance(meta, dict):
        raise SteerError(f"{path}/config.json is not a steerinterp steerer (a JSON "
                         f"{type(meta).__name__}, not an object)")
    if meta.get("format") != FORMAT or meta.get("method") not in REGISTRY:
        raise SteerError(f"{path}/config.json is not a steerinterp steerer "
                         f"(format {meta.get('format')!r}, method {meta.get('method')!r})")
    cls = REGISTRY[meta["method"]]
    steerer = cls(_config_from(cls, meta, path))
    tensors = load_tensors(path / "state.safetensors", meta.get("state_sha256"), "steerer state")
    for key, value in tensors.items():
        steerer.tensors[key] = nn.Parameter(value, requires_grad=False)
    steerer.provenance = FitRecord.from_dict(meta["provenance"])
    steerer.load_extra_state(meta.get("extra", {}))
    _check_state(steerer, meta, path)
    if model is not None:
        steerer.check_model(model)
    return steerer


def _config_from(cls: type[Steerer], meta: dict, path: Path) -> SteerConfig:
    """The method's Config from ``config.json``, naming the field a hand edit broke."""
    for field_name, kind in (("config", dict), ("provenance", dict)):
        if not isinstance(meta.get(field_name), kind):
            raise SteerError(f"{path}/config.json: field {field_name!r} is missing or not an "
                             "object")
    for field_name in ("sites", "widths"):
        if not isinstance(meta["provenance"].get(field_name), (list, dict)):
            raise SteerError(f"{path}/config.json: provenance lacks {field_name!r}")
    config = dict(meta["config"])
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise SteerError(f"{path}/config.json: unknown field(s) {unknown} in the "
                         f"{cls.method} config; known: {', '.join(sorted(known))}")
    if config.get("sites") is not None:
        config["sites"] = tuple(config["sites"])
    try:
        return cls.Config(**config)
    except (TypeError, ValueError, SteerError) as e:
        raise SteerError(f"{path}/config.json: bad {cls.method} config: {e}") from None


def _check_state(steerer: Steerer, meta: dict, path: Path) -> None:
    """The state holds exactly the tensors ``config.json`` lists (older files: at least one
    per site), each of its site's width."""
    listed = meta.get("tensors")
    have = set(steerer.tensors)
    try:
        for key in have:
            Site.from_key(key)
    except ValueError as err:
        raise SteerError(f"{path}: state.safetensors: {err}") from None
    if listed is not None and set(listed) != have:
        missing, extra = sorted(set(listed) - have), sorted(have - set(listed))
        raise SteerError(f"{path}: state.safetensors does not match config.json "
                         f"(missing {missing}, unexpected {extra})")
    if listed is None:  # older files list no tensors: each site needs at least one
        keyed = {Site.from_key(k)[0] for k in have}
        bare = [str(s) for s in steerer.provenance.sites if s not in keyed]
        if bare:
            raise SteerError(f"{path}: state.safetensors has no tensor for site(s) {bare}")
    _check_widths(steerer, path)


def _check_widths(steerer: Steerer, path: Path) -> None:
    widths = steerer.provenance.widths
    for key, value in steerer.tensors.items():
        site = Site.from_key(key)[0]
        if site not in widths:
            raise SteerError(f"{path}: tensor {key} belongs to no site this steerer steers")
        if value.dim() >= 1 and value.shape[-1] != widths[site]:
            raise SteerError(f"{path}: tensor {key} has width {value.shape[-1]}, "
                             f"expected {widths[site]} at {site}")
