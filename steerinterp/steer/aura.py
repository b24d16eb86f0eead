"""AurA and its expert baselines Det0 / Damp (Suau et al. 2024, "Whispering Experts", ICML'24;
METHODS.md §3). All three dampen units multiplicatively, ``z' = z + λ(α ⊙ z − z)``, with factors
from each unit's AUROC as a detector of the source (toxic = 1) vs target (0), on max-pooled
activations. No bias term, so they fold into the preceding weights.

* ``aura``: ``α = 1 − Gini = 2(1 − AUROC)`` where AUROC > 0.5, else 1 (no hyperparameter).
* ``det0``: the top-``num_experts`` units of *all* hooked sites, ranked together, get ``α = 0``.
* ``damp``: the same experts get ``α = damp_alpha`` (default 0.5).

Det0 follows ml-aura (experts set to 0), not AcT Table 1's self-conditioning variant (experts
picked by average precision and forced to the constant ``m_target``): it shares AurA's ranking,
so the two baselines differ from AurA only in the factor. Expert threshold as in ml-aura: the
(k+1)-th largest AUROC; units *strictly* above it are experts, so ties at the threshold can give
fewer than k experts (never more). ``num_experts=None`` selects every unit with AUROC > 0.5.
Ranking uses float64 AUROCs (ml-aura casts to float32, which can merge near-ties).

Tensors per site: ``omega`` (α), ``auroc`` (float32, for analyses) and, for det0/damp,
``expert`` (1.0 on the experts; :meth:`Det0.experts` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Float64

from ..metrics import auroc
from ..sites import Site
from ..store import ActivationStore
from .affine import AffineSteerer
from .base import SteerConfig, SteerError, register


@dataclass(frozen=True)
class Det0Config(SteerConfig):
    num_experts: int | None = None  # None: every unit with AUROC > 0.5

    def __post_init__(self) -> None:
        k = self.num_experts
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise SteerError(f"num_experts must be a positive integer or None, got {k!r}")


@dataclass(frozen=True)
class DampConfig(Det0Config):
    damp_alpha: float = 0.5  # factor applied to the experts (ml-aura default)

    def __post_init__(self) -> None:
        super().__post_init__()
        a = self.damp_alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
            raise SteerError(f"damp_alpha must be a number in [0, 1], got {a!r}")


def unit_aurocs(source: ActivationStore, target: ActivationStore,
                sites: list[Site]) -> dict[Site, Float64[torch.Tensor, "d"]]:
    """Per-unit AUROC at each site, source = positive class (the behaviour to remove)."""
    out = {}
    for site in sites:
        src, tgt = source[site], target[site]
        labels = torch.cat([torch.ones(len(src)), torch.zeros(len(tgt))])
        out[site] = auroc(torch.cat([src, tgt]), labels)
    return out


def aura_alpha(auc: Float64[torch.Tensor, "d"]) -> Float64[torch.Tensor, "d"]:
    """``1 − Gini`` for units that detect the source; units at or below chance stay untouched
    (they fire for target text, and dampening them would not remove the behaviour)."""
    return torch.where(auc > 0.5, 2.0 * (1.0 - auc), torch.ones_like(auc))


def expert_threshold(aurocs: dict[Site, torch.Tensor], num_experts: int | None) -> float:
    """The AUROC that experts must strictly exceed, ranking all units of all sites together."""
    if num_experts is None:
        return 0.5
    every = torch.cat(list(aurocs.values()))
    if num_experts > every.numel():
        raise SteerError(f"num_experts={num_experts} but the hooked sites have only "
                         f"{every.numel()} units")
    if num_experts == every.numel():
        return float("-inf")  # every unit is an expert (ml-aura would index past the end)
    return float(torch.sort(every, descending=True).values[num_experts])


class _AurocSteerer(AffineSteerer):
    """Shared fit: AUROC per unit (kept as tensor ``auroc`` for analyses) → factor ``omega``."""

    default_pool = "max"  # ml-aura configs/aura.yaml

    def _fit(self, model, source, target, sites: list[Site]) -> None:
        aurocs = unit_aurocs(source, target, sites)
        for site, tensors in self._tensors(aurocs).items():
            self.set_tensor(site, "auroc", aurocs[site])
            for name, value in tensors.items():
                self.set_tensor(site, name, value)

    def _tensors(self, aurocs: dict[Site, torch.Tensor]
                 ) -> dict[Site, dict[str, Float[torch.Tensor, "d"]]]:
        raise NotImplementedError


@register
class Aura(_AurocSteerer):
    """AurA: dampen each unit in proportion to its expertise, ``α = 2(1 − AUROC)``."""

    method = "aura"

    def _tensors(self, aurocs):
        return {site: {"omega": aura_alpha(auc)} for site, auc in aurocs.items()}


@register
class Det0(_AurocSteerer):
    """Det0 (ml-aura): set the global top-``num_experts`` units by AUROC to zero."""

    method = "det0"
    Config = Det0Config

    def _expert_factor(self) -> float:
        return 0.0

    def _tensors(self, aurocs):
        threshold = expert_threshold(aurocs, self.config.num_experts)
        factor = self._expert_factor()
        # The expert mask is stored too: α alone hides experts when damp_alpha = 1, and the
        # stored float32 AUROCs could break float64 near-ties differently.
        return {site: {"omega": torch.where(auc > threshold, factor, 1.0),
                       "expert": (auc > threshold).float()} for site, auc in aurocs.items()}

    def experts(self) -> dict[Site, torch.Tensor]:
        """Boolean mask of the expert units per site."""
        return {site: self.tensor(site, "expert") > 0 for site in self.sites}


@register
class Damp(Det0):
    """Damp (ml-aura): multiply the same global experts by ``damp_alpha``."""

    method = "damp"
    Config = DampConfig

    def _expert_factor(self) -> float:
        return float(self.config.damp_alpha)
