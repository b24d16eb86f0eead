"""ActAdd: activation addition from contrast prompt pairs (Turner et al. 2023, "Steering Language
Models With Activation Engineering"; METHODS.md §8).

``β = mean_i (h(target_i) − h(source_i))`` at one site (default: the residual stream entering
the middle block), with pair ``i = (source[i], target[i])``; then ``z' = z + λβ`` at every
position, λ unbounded (negative λ steers toward the source). With one pair this is the paper's
single contrast pair; with many it is CAA's mean paired difference (Rimsky et al. 2023).

Choices (AcT Table 1's framing, not the original paper's): last-token pooling of each prompt
instead of adding the position-aligned difference over the first tokens, and addition at all
positions (prompt and generated) instead of only at the prompt's start.
"""

from __future__ import annotations

from ..sites import Site
from ..store import ActivationStore
from .affine import AffineSteerer
from .base import SteerError, register


@register
class ActAdd(AffineSteerer):
    method = "actadd"
    default_pool = "last"
    strength_range = None  # vector addition: λ is a free scale (AcT §3.3)

    def fit(self, model, source, target=None, *, control=None) -> ActAdd:
        """Fit on prompt pairs: ``source[i]`` and ``target[i]`` form pair i (texts or stores
        of equal length, in pair order)."""
        if target is not None and _count(source) != _count(target):
            raise SteerError(f"{self.method} needs prompt pairs: source and target must have "
                             f"the same length (pair i = (source[i], target[i])), got "
                             f"{_count(source)} source and {_count(target)} target items")
        return super().fit(model, source, target)

    def _fit(self, model, source, target, sites: list[Site]) -> None:
        for site in sites:
            # Row i of each store is prompt i (collect() keeps the caller's order).
            diff = target[site].double() - source[site].double()
            self.set_tensor(site, "bias", diff.mean(0))


def _count(data) -> int:
    if isinstance(data, str):
        raise SteerError("source/target must be lists of prompts, not a single string")
    if isinstance(data, ActivationStore):
        return data.n
    return len(data)
