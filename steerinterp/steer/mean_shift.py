"""Mean shift / Mean-AcT (Rodriguez et al. 2025, AcT §4.1 ``mean_ot``; CAA-style ``m_b − m_a``).

``z' = z + λ·(mean(target) − mean(source))`` per unit, optionally only inside the source's
transport support ``[min, max]`` (AcT §3.1). Pooling: mean over tokens.

Fitted causally by default (AcT §3.2, Def. 3.2; :mod:`~steerinterp.steer.causal`): each layer's
shift is the mean difference with the earlier layers' shifts active, so shifts do not compound
through the layers. ``causal=False`` fits every site from one unsteered pass (and accepts
ActivationStores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float

from ..sites import Site
from .affine import AffineSteerer
from .base import SteerConfig, register
from .causal import CausalFit


@dataclass(frozen=True)
class MeanShiftConfig(SteerConfig):
    support: bool = False  # restrict to the source range Q_o = [min, max] (AcT §3.1)
    causal: bool = True  # fit layer by layer with earlier shifts active (AcT §3.2); needs texts
    causal_target: str = "steered"  # or "unsteered" (causal.py: which target each layer fits)


@register
class MeanShift(CausalFit, AffineSteerer):
    method = "mean_shift"
    Config = MeanShiftConfig

    def _fit_site(self, site: Site, source: Float[torch.Tensor, "n d"],
                  target: Float[torch.Tensor, "m d"]) -> None:
        src, tgt = source.double(), target.double()
        self.set_tensor(site, "bias", tgt.mean(0) - src.mean(0))
        if self.config.support:
            self.set_tensor(site, "lo", src.min(0).values)
            self.set_tensor(site, "hi", src.max(0).values)
