"""The per-unit affine primitive most methods share (AcT's unifying view, METHODS.md §8):

    z' = z + λ·((ω ⊙ z + b) − z),   applied only where lo < z < hi when a support is stored.

AurA is ω = α, b = 0; mean shift ω = 1, b = m_target − m_source; ActAdd / ITI-c ω = 1, b = β;
Linear-AcT a fitted (ω, b) with transport support. Missing ω means 1, missing b means 0.
"""

from __future__ import annotations

import torch
from jaxtyping import Float

from ..sites import Site
from .base import Steerer


class AffineSteerer(Steerer):
    """Base for methods whose map is a static per-unit affine function (foldable into weights)."""

    def affine(self, site: Site) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(omega, bias)`` at ``site`` (``None`` for the identity part)."""
        return self.tensor(site, "omega"), self.tensor(site, "bias")

    def transport_support(self, site: Site) -> tuple[torch.Tensor, torch.Tensor] | None:
        lo, hi = self.tensor(site, "lo"), self.tensor(site, "hi")
        return None if lo is None else (lo, hi)

    def steer(self, acts: Float[torch.Tensor, "... d"], site: Site,
              strength: float | None = None) -> Float[torch.Tensor, "... d"]:
        lam = self.check_strength(self.config.strength if strength is None else strength)
        omega, bias = self.affine(site)
        mapped = acts if omega is None else acts * omega
        if bias is not None:
            mapped = mapped + bias
        support = self.transport_support(site)
        if support is not None:
            # Transport support (AcT §3.1): values outside the source range are left alone.
            inside = (acts > support[0]) & (acts < support[1])
            mapped = torch.where(inside, mapped, acts)
        return acts + lam * (mapped - acts)
