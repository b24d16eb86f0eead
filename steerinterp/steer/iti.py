"""ITI-c: inference-time intervention along a linear probe's normal (Li et al. 2023, "Inference-
Time Intervention"; the whole-layer variant used as a baseline by AcT and LinEAS; METHODS.md §8).

Per site, a logistic-regression probe separates source (1) from target (0) pooled activations.
``θ`` = unit normal of its hyperplane in activation space, oriented toward the target; then
``z' = z + λβ`` at every position with λ unbounded and

* ``scale="std"`` (default): ``β = σθ``, σ = std of the projections ``x·θ`` of all fitted
  activations (ITI's ``α·σ·θ``, so λ plays ITI's α and is comparable across sites);
* ``scale="unit"``: ``β = θ`` (the reading of AcT/LinEAS, whose scaling is unspecified).

Choices: mean pooling (AcT uses the last token for ITI, but on short prompts the last token is
often punctuation; ``pool="last"`` restores it); whole layers, not ITI's top-K heads; the probe
sees standardised inputs (well conditioned for lbfgs) and its weights are mapped back through
the standardisation, so θ is the normal in raw activation space. The direction is fitted on all
samples; a second probe on a stratified split gives the held-out accuracy in ``probe_stats``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float

from ..sites import Site
from .affine import AffineSteerer
from .base import SteerConfig, SteerError, register
from .probe import standardised_logistic, stratified_split



@dataclass(frozen=True)
class ItiConfig(SteerConfig):
    scale: str = "std"          # "std": β = σθ (ITI); "unit": β = θ
    C: float = 1.0              # inverse L2 regularisation of the probe (sklearn's C)
    val_fraction: float = 0.25  # share of each class held out to report probe accuracy; 0: none
    seed: int = 0               # the held-out split

    def __post_init__(self) -> None:
        if self.scale not in ("std", "unit"):
            raise SteerError(f"scale must be 'std' or 'unit', got {self.scale!r}")
        if not isinstance(self.C, (int, float)) or not self.C > 0:
            raise SteerError(f"C must be a positive number, got {self.C!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0 <= self.val_fraction < 1:
            raise SteerError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")


def probe_direction(src: Float[torch.Tensor, "n d"], tgt: Float[torch.Tensor, "m d"],
                    c: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, float, float]:
    """``(θ, σ, train accuracy)``: unit normal toward the target, std of projections on θ."""
    x = torch.cat([src, tgt]).double().numpy()
    y = np.r_[np.ones(len(src)), np.zeros(len(tgt))]
    clf, mu, sd = standardised_logistic(x, y, c, seed)
    # decision(x) = w_std · (x − μ)/s + b, so its gradient in activation space is w_std / s;
    # a positive decision means "source", hence the minus sign to point at the target.
    w = -clf.coef_[0] / sd
    norm = float(np.linalg.norm(w))
    if not norm > 0:
        raise SteerError("the ITI probe found no direction (source and target activations have "
                         "identical statistics)")
    theta = w / norm
    sigma = float((x @ theta).std())
    accuracy = float(clf.score((x - mu) / sd, y))
    return torch.from_numpy(theta), sigma, accuracy


def heldout_accuracy(src: torch.Tensor, tgt: torch.Tensor, c: float, frac: float,
                     seed: int) -> float | None:
    """Accuracy of a probe fitted without a stratified ``frac`` of each class, on that share;
    ``None`` when a class is too small to leave samples on both sides."""
    if frac == 0 or min(len(src), len(tgt)) < 2:
        return None
    x = torch.cat([src, tgt]).double().numpy()
    y = np.r_[np.ones(len(src)), np.zeros(len(tgt))]
    fit, val = stratified_split(len(src), len(tgt), frac, seed)
    clf, mu, sd = standardised_logistic(x[fit], y[fit], c, seed)
    xv, yv = x[val], y[val]
    return float(clf.score((xv - mu) / sd, yv))


@register
class Iti(AffineSteerer):
    method = "iti"
    Config = ItiConfig
    default_pool = "mean"
    strength_range = None  # vector addition: λ is a free scale (AcT §3.3)

    def __init__(self, config: ItiConfig | None = None) -> None:
        super().__init__(config)
        self.probe_stats: dict[str, dict] = {}

    def _fit(self, model, source, target, sites: list[Site]) -> None:
        cfg, self.probe_stats = self.config, {}
        for site in sites:
            src, tgt = source[site], target[site]
            try:
                theta, sigma, train_acc = probe_direction(src, tgt, cfg.C, cfg.seed)
            except SteerError as err:
                raise SteerError(f"{site}: {err}") from None
            self.set_tensor(site, "direction", theta)
            self.set_tensor(site, "bias", theta * (sigma if cfg.scale == "std" else 1.0))
            self.probe_stats[str(site)] = {
                "train_accuracy": train_acc, "sigma": sigma,
                "heldout_accuracy": heldout_accuracy(src, tgt, cfg.C, cfg.val_fraction, cfg.seed)}

    def extra_state(self) -> dict:
        return {"probe_stats": self.probe_stats}

    def load_extra_state(self, state: dict) -> None:
        self.probe_stats = dict(state.get("probe_stats", {}))
