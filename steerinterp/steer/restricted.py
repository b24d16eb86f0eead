"""A view of a fitted steerer restricted to some of its sites and units: what attribution and
the λ = 1 diagnosis switch on and off. Never fitted or saved itself."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from jaxtyping import Float

from ..sites import Site
from .base import Steerer, SteerError, check_sites

__all__ = ["Restricted"]


class Restricted(Steerer):
    """A view of a fitted ``base`` that steers only ``sites`` (default: all of the base's) and,
    where ``unit_masks[site]`` is given, only the units where the mask is True:
    ``z' = z + m ⊙ (base(z) − z)``. With all sites and no masks it equals the base exactly.
    Not a registered method (never saved); use it like any steerer through ``steered()``."""

    method = "restricted"

    def __init__(self, base: Steerer, sites=None,
                 # bool [d] masks; any tensor is accepted so _check_mask can name a bad one
                 unit_masks: Mapping[Site | str, torch.Tensor] | None = None) -> None:
        if not isinstance(base, Steerer) or not base.fitted:
            raise SteerError(f"Restricted needs a fitted steerer, got {type(base).__name__}")
        super().__init__(base.config, check=False)  # the range is the base's (checked there)
        self.base = base
        self.method = f"restricted {base.method}"
        wanted = set(check_sites(sites, base.sites, f"the {base.method} steerer"))
        kept = [s for s in base.sites if s in wanted]  # the base's (forward) order
        widths = base.provenance.widths
        self.provenance = base.provenance.restricted(kept)
        self._mask_names: dict[Site, str] = {}
        for key, mask in (unit_masks or {}).items():
            site = self._mask_site(key, kept)
            self._check_mask(site, mask, widths[site])
            name = f"mask_{site.layer}_{site.point}"
            self.register_buffer(name, mask.detach().clone(), persistent=False)
            self._mask_names[site] = name

    @property
    def strength_range(self) -> tuple[float, float] | None:
        return self.base.strength_range

    def _mask_site(self, key, kept: list[Site]) -> Site:
        site = check_sites([key], self.base.sites, f"the {self.base.method} steerer")[0]
        if site not in kept:
            raise ValueError(f"unit mask given for {site}, which this view does not keep; "
                             f"kept sites: {', '.join(map(str, kept)) or 'none'}")
        return site

    @staticmethod
    def _check_mask(site: Site, mask, width: int) -> None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"unit mask for {site} must be a bool tensor, got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if tuple(mask.shape) != (width,):
            raise ValueError(f"unit mask for {site} has shape {tuple(mask.shape)}; the site "
                             f"has {width} units")

    def mask(self, site: Site) -> torch.Tensor | None:
        """The unit mask at ``site`` (None: every unit steered)."""
        name = self._mask_names.get(site)
        return None if name is None else getattr(self, name)

    def steer(self, acts: Float[torch.Tensor, "... d"], site: Site,
              strength: float | None = None) -> Float[torch.Tensor, "... d"]:
        lam = self.check_strength(self.config.strength if strength is None else strength)
        out = self.base.steer(acts, site, lam)
        mask = self.mask(site)
        # where() rather than z + m·(out − z): unmasked units are the base's output bit for bit.
        return out if mask is None else torch.where(mask.to(acts.device), out, acts)

    def fit(self, model, source, target=None, *, control=None):
        raise SteerError("Restricted is a view of a fitted steerer; fit the base instead")

    def save(self, path) -> None:
        raise SteerError("a Restricted view is not saved; save its base and rebuild the view")
