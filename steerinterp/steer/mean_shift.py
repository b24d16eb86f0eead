"""Mean shift / Mean-AcT (Rodriguez et al. 2025, AcT §4.1 ``mean_ot``; CAA-style ``m_b − m_a``).

``z' = z + λ·(mean(target) − mean(source))`` per unit, optionally only inside the source's
transport support ``[min, max]`` (AcT §3.1). Pooling: mean over tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sites import Site
from .affine import AffineSteerer
from .base import SteerConfig, register


@dataclass(frozen=True)
class MeanShiftConfig(SteerConfig):
    support: bool = False  # restrict to the source range Q_o = [min, max] (AcT §3.1)


@register
class MeanShift(AffineSteerer):
    method = "mean_shift"
    Config = MeanShiftConfig

    def _fit(self, model, source, target, sites: list[Site]) -> None:
        for site in sites:
            src, tgt = source[site].double(), target[site].double()
            self.set_tensor(site, "bias", tgt.mean(0) - src.mean(0))
            if self.config.support:
                self.set_tensor(site, "lo", src.min(0).values)
                self.set_tensor(site, "hi", src.max(0).values)
