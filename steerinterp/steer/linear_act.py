"""Linear-AcT: per-unit affine optimal transport (Rodriguez et al., "Controlling Language and
Diffusion Models by Transporting Activations", ICLR'25; METHODS.md §4).

For every unit, sort the pooled source and target samples (the exact 1-D OT coupling) and fit
``T(a) = ω·a + β`` by least squares of the sorted target on the sorted source (AcT Def. 3.1).
At inference ``z' = z + λ·(T(z) − z)`` with λ ∈ [0, 1] (λ = 1: full transport, the paper's
default), applied only strictly inside the transport support ``Q_o = [min, max]`` of the pooled
source activations when ``support=True`` (AcT §3.1; the reference default for mitigation).

Unequal source/target counts are allowed: :func:`~steerinterp.metrics.sorted_affine_fit`
matches the two samples by quantiles (the reference code requires equal counts).

Causal estimation (``causal=True``, the default; AcT §3.2, Def. 3.2) fits the sites layer by
layer with the earlier layers' maps active; it needs texts. The loop lives in
:mod:`~steerinterp.steer.causal`, shared with Mean-AcT; this module supplies the per-site fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float

from ..metrics import sorted_affine_fit
from ..sites import Site
from .affine import AffineSteerer
from .base import SteerConfig, register
from .causal import CausalFit, layer_groups  # noqa: F401  (layer_groups: re-exported)


@dataclass(frozen=True)
class LinearActConfig(SteerConfig):
    support: bool = True  # transport only inside the source range Q_o = [min, max] (AcT §3.1)
    causal: bool = True  # fit layer by layer with earlier maps active (AcT §3.2); needs texts
    causal_target: str = "steered"  # or "unsteered" (causal.py: which target each layer fits)


@register
class LinearAct(CausalFit, AffineSteerer):
    """Linear-AcT (AcT §3.1–3.2): a fitted per-unit affine transport map ``(ω, β)`` per site,
    with optional transport support ``(lo, hi)``; causal (layer-by-layer) estimation by default.

    ``fit(model, source_texts, target_texts)`` fits causally; with ActivationStores pass
    ``causal=False`` (simultaneous estimation from one unsteered pass, as in AcT's ablation).
    """

    method = "linear_act"
    Config = LinearActConfig
    default_pool = "mean"

    def _fit_site(self, site: Site, source: Float[torch.Tensor, "n d"],
                  target: Float[torch.Tensor, "m d"]) -> None:
        """Sorted least-squares ``(ω, β)`` (float64, quantile-matched when n ≠ m) and the
        source support ``[min, max]``."""
        omega, beta = sorted_affine_fit(source, target)
        self.set_tensor(site, "omega", omega)
        self.set_tensor(site, "bias", beta)
        if self.config.support:
            self.set_tensor(site, "lo", source.amin(0))
            self.set_tensor(site, "hi", source.amax(0))
