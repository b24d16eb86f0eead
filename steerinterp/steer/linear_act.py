"""Linear-AcT: per-unit affine optimal transport (Rodriguez et al., "Controlling Language and
Diffusion Models by Transporting Activations", ICLR'25; METHODS.md §4).

For every unit, sort the pooled source and target samples (the exact 1-D OT coupling) and fit
``T(a) = ω·a + β`` by least squares of the sorted target on the sorted source (AcT Def. 3.1).
At inference ``z' = z + λ·(T(z) − z)`` with λ ∈ [0, 1] (λ = 1: full transport, the paper's
default), applied only strictly inside the transport support ``Q_o = [min, max]`` of the pooled
source activations when ``support=True`` (AcT §3.1; the reference default for mitigation).

Unequal source/target counts are allowed: :func:`~steerinterp.metrics.sorted_affine_fit`
matches the two samples by quantiles (the reference code requires equal counts).

Causal estimation (``causal=True``, AcT §3.2, Def. 3.2): the sites are fitted layer by layer
in forward order, and each layer's maps are fitted on activations produced with the maps of all
earlier layers active, so a map sees the distribution it will actually receive at inference.
This needs texts (activations must be re-collected under the partial intervention) and costs
≈ 2 forward passes (source + target, truncated after the layer) per layer group. Sites of one
layer are fitted together: the reference refits after every hooked module, so there e.g. GPT-2's
``ln2`` also sees the same block's ``ln1`` map; grouping halves the passes for that difference.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import nn
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..metrics import sorted_affine_fit
from ..models import model_info
from ..sites import Site
from ..store import ActivationStore
from .affine import AffineSteerer
from .apply import steered
from .base import SteerConfig, SteerError, register


@dataclass(frozen=True)
class LinearActConfig(SteerConfig):
    support: bool = True  # transport only inside the source range Q_o = [min, max] (AcT §3.1)
    causal: bool = True  # fit layer by layer with earlier maps active (AcT §3.2); needs texts


def layer_groups(sites: list[Site]) -> list[list[Site]]:
    """``sites`` grouped by layer, groups and members in forward-pass order."""
    ordered = sorted(sites)
    return [list(g) for _, g in itertools.groupby(ordered, key=lambda s: s.layer)]


@register
class LinearAct(AffineSteerer):
    """Linear-AcT (AcT §3.1–3.2): a fitted per-unit affine transport map ``(ω, β)`` per site,
    with optional transport support ``(lo, hi)``; causal (layer-by-layer) estimation by default.

    ``fit(model, source_texts, target_texts)`` fits causally; with ActivationStores pass
    ``causal=False`` (simultaneous estimation from one unsteered pass, as in AcT's ablation).
    """

    method = "linear_act"
    Config = LinearActConfig
    default_pool = "mean"

    # -- data ------------------------------------------------------------------------------
    def as_store(self, model: HookedTransformer, data, sites: list[Site],
                 role: str) -> ActivationStore:
        """Non-causal: as the base. Causal: texts only, and only the first layer group is
        collected here (from the unsteered model); :meth:`_fit` collects every later group
        itself once the maps before it exist, so no pass over later layers is wasted."""
        if not self.config.causal:
            return super().as_store(model, data, sites, role)
        if isinstance(data, ActivationStore):
            raise SteerError(
                f"linear_act causal estimation needs texts, not an ActivationStore ({role}): "
                "each layer is fitted on activations re-collected with the earlier layers' "
                "maps active. Pass the texts, or causal=False to fit from stores "
                "(simultaneous estimation)")
        return super().as_store(model, data, layer_groups(sites)[0], role)

    # -- fitting -----------------------------------------------------------------------------
    def _fit(self, model: HookedTransformer, source: ActivationStore,
             target: ActivationStore | None, sites: list[Site]) -> None:
        if not self.config.causal:
            for site in sites:
                self._fit_site(site, source[site], target[site])
            return
        groups = layer_groups(sites)
        done: list[Site] = []
        for i, group in enumerate(tqdm(groups, desc="linear_act (causal)", unit="layer",
                                       disable=len(groups) < 2)):
            if i > 0:  # the first group was collected unsteered by as_store
                source, target = self._collect_under(model, done, group, source.texts,
                                                     target.texts)
            for site in group:
                self._fit_site(site, source[site], target[site])
            done.extend(group)

    def _collect_under(self, model: HookedTransformer, done: list[Site], group: list[Site],
                       source_texts: list[str], target_texts: list[str]
                       ) -> tuple[ActivationStore, ActivationStore]:
        """Source and target activations at ``group`` with the maps at ``done`` active.

        Earlier maps run at λ = 1: the maps are the full transport (the reference learns with
        strength 1), λ only interpolates at inference. ``collect`` stops after ``group``'s
        layer, so each call costs two truncated forward passes.
        """
        partial = self._partial(model, done)
        base_as_store = super().as_store
        with steered(model, partial, strength=1.0):
            return (base_as_store(model, source_texts, group, "source"),
                    base_as_store(model, target_texts, group, "target"))

    def _partial(self, model: HookedTransformer, done: list[Site]) -> LinearAct:
        """A fitted copy restricted to the sites in ``done`` (copies, so that ``steered()``
        moving it to the model's device leaves this steerer's tensors where they are)."""
        part = LinearAct(self.config)
        keys = {self._key(s, name) for s in done for name in ("omega", "bias", "lo", "hi")}
        part.tensors = nn.ParameterDict({
            key: nn.Parameter(value.detach().clone(), requires_grad=False)
            for key, value in self.tensors.items() if key in keys})
        part.provenance = {"model": model_info(model).to_dict(),
                           "sites": [str(s) for s in done],
                           "widths": {str(s): s.width(model) for s in done}}
        return part

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
