"""LinEAS: Linear End-to-end Activation Steering (Rodriguez et al., NeurIPS'25; METHODS.md §5).

One per-unit affine map ``T_ℓ(z) = ω_ℓ ⊙ z + b_ℓ`` per site (identity at init), trained
*jointly* so each map knows its downstream effect: the loss sums, over sites and units, the
squared 1-D Wasserstein distance between mean-pooled source activations produced by the steered
model and target activations of the untouched model (precomputed once). Optimised by proximal
SGD (cosine-decayed lr) with a sparse-group-lasso on the deviation from identity,
``γ·Σ_ℓ [λ1(‖ω−1‖₁ + ‖b‖₁) + λG·√d_ℓ(‖ω−1‖₂ + ‖b‖₂)]``; γ > 0 switches whole sites off.

Choices the paper leaves open (METHODS.md §11.4), all our reading: mean pooling; identity init;
thresholds scaled by the current step size (standard proximal SGD); √d_ℓ group weight. Beyond
the paper: by default (``normalize=True``) each unit's W2² is weighted by 1 / (d·max(E[η²], 1))
(η: target activations, d: site width), a per-site mean with bounded curvature — the paper's plain sum (``normalize=False``)
diverges at lr 0.1 on gemma-3-270m, whose post-norm activations range from ~0.5 to ~110 in
magnitude across layers. Inference: ``z + λ(ω z + b − z)``, λ ∈ [0, 1].
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from ..collection import validate_lengths, validate_texts
from ..sites import Site
from ..store import ActivationStore
from ..tokens import token_ids
from ..train import TrainSettings, group_soft_threshold, soft_threshold, train
from .affine import AffineSteerer
from .apply import steered
from .base import SteerConfig, SteerError, register


@dataclass(frozen=True)
class LineasConfig(SteerConfig):
    steps: int = 1000  # paper: 1K steps in the low-data regime (N = 32)
    lr: float = 0.1
    gamma: float = 0.0  # sparsity knob; the toxicity tables use 0
    lambda1: float = 1.0
    lambda_group: float = 1.0
    minibatch: int = 32  # source and target samples per step (equal: W2 pairs them)
    seed: int = 0
    normalize: bool = True  # unit terms ÷ (d·max(E[target²], 1)): lr 0.1 stays stable

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.minibatch < 2:
            raise SteerError("lineas needs steps >= 1, lr > 0 and minibatch >= 2")
        if min(self.gamma, self.lambda1, self.lambda_group) < 0:
            raise SteerError("lineas gamma, lambda1 and lambda_group must be >= 0")


@register
class Lineas(AffineSteerer):
    """LinEAS maps at every site, trained end to end. ``fit(model, source_texts, target)``:
    the source must be texts (they run through the steered model with gradients); the target
    may be texts or a mean-pooled store. Unequal sizes are fine: each step draws
    ``min(minibatch, n_source, n_target)`` of each."""

    method = "lineas"
    Config = LineasConfig

    def fit(self, model: HookedTransformer, source, target=None) -> Lineas:
        t0 = time.perf_counter()
        if isinstance(source, ActivationStore):
            raise SteerError("lineas needs source texts, not an ActivationStore: the source "
                             "runs through the steered model at every training step")
        if target is None:
            raise SteerError("lineas needs both a source and a target set")
        sites = self.resolve_sites(model)
        texts = validate_texts(source)
        ids = token_ids(model, texts, self.config.max_tokens)
        validate_lengths(ids, texts, True, self.config.max_tokens)
        tgt = self.as_store(model, target, sites, "target")
        for site in sites:
            width = site.width(model)
            self.set_tensor(site, "omega", torch.ones(width), trainable=True)
            self.set_tensor(site, "bias", torch.zeros(width), trainable=True)
        self.record_provenance(model, sites, len(texts), tgt.n, t0)  # steered() needs it
        self.to(model.cfg.device)
        settings = TrainSettings(steps=self.config.steps, lr=self.config.lr,
                                 batch_size=self.config.minibatch, seed=self.config.seed,
                                 normalize=self.config.normalize)
        with steered(model, self, strength=1.0):
            self.loss_curve = train(model, list(self.tensors.values()), ids, tgt, sites,
                                    settings, prox=self._prox, desc="lineas")
        for p in self.tensors.values():
            p.requires_grad_(False)
        self.record_provenance(model, sites, len(texts), tgt.n, t0)
        return self

    def _prox(self, step_size: float) -> None:
        """Sparse-group-lasso proximal step on ω − 1 and b, per site (LinEAS Alg. 1)."""
        g = self.config.gamma
        if g == 0:
            return
        for site in self.sites:
            width = self.provenance["widths"][str(site)]
            t_group = step_size * g * self.config.lambda_group * math.sqrt(width)
            for name, centre in (("omega", 1.0), ("bias", 0.0)):
                p = self.tensor(site, name)
                v = soft_threshold(p - centre, step_size * g * self.config.lambda1)
                p.copy_(group_soft_threshold(v, t_group) + centre)

    # -- read-outs ---------------------------------------------------------------------------
    def support(self) -> pd.DataFrame:
        """Per site: ``support`` (share of units with ω ≠ 1 or b ≠ 0), ``omega_norm``
        (‖ω − 1‖₂), ``bias_norm`` (‖b‖₂) and ``group_norm`` (their sum)."""
        rows = []
        for site in self.sites:
            dw = self.tensor(site, "omega").detach() - 1.0
            b = self.tensor(site, "bias").detach()
            rows.append({"site": str(site), "layer": site.layer, "point": site.point,
                         "support": ((dw != 0) | (b != 0)).float().mean().item(),
                         "omega_norm": dw.norm().item(), "bias_norm": b.norm().item(),
                         "group_norm": (dw.norm() + b.norm()).item()})
        return pd.DataFrame(rows)

    def loss_frame(self) -> pd.DataFrame:
        """The training curve (``step``, ``lr``, ``loss``, ``w2``)."""
        return pd.DataFrame(getattr(self, "loss_curve", []))

    def extra_state(self) -> dict:
        return {"loss_curve": getattr(self, "loss_curve", [])}

    def load_extra_state(self, state: dict) -> None:
        self.loss_curve = state.get("loss_curve", [])

    # -- algebra -------------------------------------------------------------------------------
    def inverse(self) -> Lineas:
        """``T⁻¹(z) = (z − b) / ω`` per site: turns concept removal into induction (LinEAS §4.4)."""
        out = self._like(self)
        for site in self.sites:
            w, b = self.tensor(site, "omega").detach(), self.tensor(site, "bias").detach()
            if (w.abs() < 1e-6).any():
                raise SteerError(f"cannot invert lineas at {site}: some ω are ~0")
            out.set_tensor(site, "omega", 1.0 / w)
            out.set_tensor(site, "bias", -b / w)
        return out

    def compose(self, other: Lineas) -> Lineas:
        """``T_other ∘ T_self`` per site (LinEAS App. J); sites of either, identity elsewhere."""
        if not isinstance(other, Lineas) or other.provenance["model"] != self.provenance["model"]:
            raise SteerError("compose() needs another lineas steerer fitted on the same model")
        out = self._like(self)
        sites = sorted(set(self.sites) | set(other.sites))
        out.provenance = dict(self.provenance, sites=[str(s) for s in sites],
                              widths={**self.provenance["widths"], **other.provenance["widths"]})
        for site in sites:
            w1, b1 = self.affine(site)
            w2, b2 = other.affine(site)
            width = out.provenance["widths"][str(site)]
            w1 = torch.ones(width) if w1 is None else w1.detach().cpu()
            b1 = torch.zeros(width) if b1 is None else b1.detach().cpu()
            w2 = torch.ones(width) if w2 is None else w2.detach().cpu()
            b2 = torch.zeros(width) if b2 is None else b2.detach().cpu()
            out.set_tensor(site, "omega", w2 * w1)
            out.set_tensor(site, "bias", w2 * b1 + b2)
        return out

    @staticmethod
    def _like(src: Lineas) -> Lineas:
        out = Lineas(src.config)
        out.provenance = dict(src.provenance)
        return out
