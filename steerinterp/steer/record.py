"""What a steerer was fitted on (``steerer.provenance``): checked when it is attached to a model
and when it is loaded, and saved in ``config.json`` under ``"provenance"``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..sites import Site

_FIELDS = ("model", "sites", "widths", "pool", "n_source", "n_target", "fit_seconds",
           "versions")


@dataclass(frozen=True)
class FitRecord:
    """``model``: the model's record (:meth:`~steerinterp.provenance.ModelInfo.to_dict`);
    ``sites`` in forward order and each one's ``widths``; ``pool``; the ``n_source`` and
    ``n_target`` samples fitted on; ``fit_seconds``; package ``versions``; ``extra``: what a
    method adds (LinEAS: ``train``, the resolved loop settings; DSAS: ``n_control``)."""

    model: dict
    sites: tuple[Site, ...]
    widths: dict[Site, int]
    pool: str = "mean"
    n_source: int = 0
    n_target: int = 0
    fit_seconds: float = float("nan")
    versions: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """As ``config.json`` stores it: site strings, the extras at the top level."""
        return {"model": self.model, "sites": [str(s) for s in self.sites],
                "widths": {str(s): w for s, w in self.widths.items()}, "pool": self.pool,
                "n_source": self.n_source, "n_target": self.n_target,
                "fit_seconds": self.fit_seconds, "versions": self.versions, **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> FitRecord:
        """Inverse of :meth:`to_dict` (older files may lack the counts and times)."""
        known = {k: d[k] for k in _FIELDS if k in d}
        return cls(**{**known, "sites": tuple(Site.parse(s) for s in d["sites"]),
                      "widths": {Site.parse(s): int(w) for s, w in d["widths"].items()}},
                   extra={k: v for k, v in d.items() if k not in _FIELDS})

    def replace(self, **changes) -> FitRecord:
        """A copy with ``changes``; unknown names go into ``extra``."""
        extra = {k: v for k, v in changes.items() if k not in _FIELDS and k != "extra"}
        fields = {k: v for k, v in changes.items() if k in _FIELDS}
        return dataclasses.replace(self, **fields,
                                   extra={**self.extra, **changes.get("extra", {}), **extra})

    def restricted(self, sites) -> FitRecord:
        """The record of a steerer that keeps only ``sites``."""
        keep = tuple(sites)
        return dataclasses.replace(self, sites=keep, widths={s: self.widths[s] for s in keep})
