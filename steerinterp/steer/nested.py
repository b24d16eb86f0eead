"""A steerer that wraps another (DSAS and its base) saves both in one folder: the base's tensors
ride in the wrapper's state as ``base_<name>`` (shared, not copied) and its method, config,
provenance and extra state in the wrapper's ``config.json``; loading rebuilds the base."""

from __future__ import annotations

import dataclasses

from torch import nn

from ..sites import Site
from .base import REGISTRY, Steerer
from .record import FitRecord

BASE = "base_"  # prefix of the base's tensors inside the wrapper's state


def link_base(tensors: nn.ParameterDict, base: Steerer) -> None:
    """Share ``base``'s tensors into ``tensors`` as ``base_<name>`` (old links replaced)."""
    for key in [k for k in tensors if Site.from_key(k)[1].startswith(BASE)]:
        del tensors[key]
    for key, p in base.tensors.items():
        site, name = Site.from_key(key)
        tensors[site.key(BASE + name)] = p


def base_record(base: Steerer) -> dict:
    """What ``config.json`` keeps of the base: method, config, provenance, extra state."""
    return {"method": base.method, "config": dataclasses.asdict(base.config),
            "provenance": base.provenance.to_dict(), "extra": base.extra_state()}


def rebuild_base(record: dict, tensors: nn.ParameterDict) -> Steerer:
    """The base from its :func:`base_record` and the wrapper's loaded ``base_*`` tensors."""
    cls = REGISTRY[record["method"]]
    cfg = dict(record["config"])
    if cfg.get("sites") is not None:
        cfg["sites"] = tuple(cfg["sites"])
    base = cls(cls.Config(**cfg))
    for key, p in tensors.items():
        site, name = Site.from_key(key)
        if name.startswith(BASE):
            base.tensors[site.key(name.removeprefix(BASE))] = p
    base.provenance = FitRecord.from_dict(record["provenance"])
    base.load_extra_state(record.get("extra", {}))
    return base
