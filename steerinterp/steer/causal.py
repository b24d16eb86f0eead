"""Causal (layer-by-layer) estimation, shared by Mean-AcT and Linear-AcT (Rodriguez et al.,
ICLR'25, AcT §3.2, Def. 3.2; METHODS.md §4.3).

Sites are fitted layer by layer in forward order; each layer's maps are fitted on source and
target activations re-collected with the maps of all earlier layers active, so a map sees the
distribution it will receive at inference instead of the unsteered one (per-layer maps fitted
on unsteered activations compound and deep layers overshoot). This needs texts and costs ≈ 2
truncated forward passes (source + target) per layer group. Sites of one layer are fitted
together: the reference refits after every hooked module (so e.g. GPT-2's ``ln2`` also sees the
same block's ``ln1`` map); grouping halves the passes for that difference.

**Which target.** AcT's reference (``learn_intervention_all_incremental``) re-runs *every*
text, source and target alike, through the earlier maps (``causal_target="steered"``, the
default): each layer then maps steered source onto *steered* target. ``"unsteered"`` (our
option, not the reference's) keeps the target as the untouched model's activations, so each
layer also undoes the drift the earlier maps caused; the target is collected once, unsteered.
On gemma-3-270m it lowers the λ = 1 PPL cost (mean shift +21.8% → +12.7%) but removes no more
toxicity at a fixed +5% PPL (README, "per-site diagnosis"), so the reference's stays the default.

A method mixes :class:`CausalFit` in before its steerer base, gives its Config ``causal:
bool`` and ``causal_target: str`` fields, and implements only
``_fit_site(site, source, target)``::

    class MeanShift(CausalFit, AffineSteerer): ...
"""

from __future__ import annotations

import itertools

import torch
from jaxtyping import Float
from torch import nn
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..provenance import model_info
from .record import FitRecord
from ..sites import Site
from ..store import ActivationStore
from .apply import steered
from .base import Steerer, SteerError

CAUSAL_TARGETS = ("steered", "unsteered")  # module docstring


def layer_groups(sites: list[Site]) -> list[list[Site]]:
    """``sites`` grouped by layer, groups and members in forward-pass order."""
    ordered = sorted(sites)
    return [list(g) for _, g in itertools.groupby(ordered, key=lambda s: s.layer)]


class CausalFit(Steerer):
    """Mixin: ``fit`` runs causal estimation when ``config.causal`` (texts only), else one
    simultaneous fit from a single unsteered pass (texts or ActivationStores). Either way every
    site is fitted by the method's ``_fit_site``."""

    def __init__(self, config=None, **kw) -> None:
        super().__init__(config, **kw)
        if self.config.causal_target not in CAUSAL_TARGETS:
            raise SteerError(f"causal_target must be one of {', '.join(CAUSAL_TARGETS)}, got "
                             f"{self.config.causal_target!r}")

    def _fit_site(self, site: Site, source: Float[torch.Tensor, "n d"],
                  target: Float[torch.Tensor, "m d"]) -> None:
        """Fit ``site``'s tensors from its pooled source and target activations."""
        raise NotImplementedError

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
                f"{self.method} causal estimation needs texts, not an ActivationStore "
                f"({role}): each layer is fitted on activations re-collected with the earlier "
                "layers' maps active. Pass the texts, or causal=False to fit from stores "
                "(simultaneous estimation)")
        if role == "target" and self.config.causal_target == "unsteered":
            return super().as_store(model, data, sites, role)  # every site, once
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
        for i, group in enumerate(tqdm(groups, desc=f"{self.method} (causal)", unit="layer",
                                       disable=len(groups) < 2)):
            if i > 0:  # the first group was collected unsteered by as_store
                source, target_now = self._collect_under(model, done, group, source.texts,
                                                         target.texts)
                if self.config.causal_target == "steered":
                    target = target_now
            for site in group:
                self._fit_site(site, source[site], target[site])
            done.extend(group)

    def _collect_under(self, model: HookedTransformer, done: list[Site], group: list[Site],
                       source_texts: list[str], target_texts: list[str]
                       ) -> tuple[ActivationStore, ActivationStore | None]:
        """Source and target activations at ``group`` with the maps at ``done`` active.

        Earlier maps run at λ = 1: the maps are the full transport (the reference learns with
        strength 1), λ only interpolates at inference. ``collect`` stops after ``group``'s
        layer, so each call costs two truncated forward passes.
        """
        partial = self._partial(model, done)
        base_as_store = super().as_store  # the plain collection, not the causal override
        with steered(model, partial, strength=1.0):
            source = base_as_store(model, source_texts, group, "source")
            if self.config.causal_target == "unsteered":
                return source, None  # the target was collected once, unsteered
            return source, base_as_store(model, target_texts, group, "target")

    def _partial(self, model: HookedTransformer, done: list[Site]) -> CausalFit:
        """A fitted copy of this steerer restricted to the sites in ``done`` (copies, so that
        ``steered()`` moving it to the model's device leaves this steerer's tensors where they
        are). Same class, so the earlier maps act exactly as they will at inference."""
        part = type(self)(self.config)
        keep = set(done)
        part.tensors = nn.ParameterDict({
            key: nn.Parameter(value.detach().clone(), requires_grad=False)
            for key, value in self.tensors.items() if Site.from_key(key)[0] in keep})
        part.provenance = FitRecord(model=model_info(model).to_dict(), sites=tuple(done),
                                    widths={s: s.width(model) for s in done})
        return part
