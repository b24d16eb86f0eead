"""LinEAS: Linear End-to-end Activation Steering (Rodriguez et al., NeurIPS'25; METHODS.md §5).

One per-unit affine map ``T_ℓ(z) = ω_ℓ ⊙ z + b_ℓ`` per site (identity at init), trained
*jointly* so each map knows its downstream effect: the loss compares, per site and unit, the
mean-pooled source activations produced by the steered model with target activations of the
untouched model (precomputed once) by the squared 1-D Wasserstein distance of sorted samples.
An optional sparse-group-lasso on the deviation from identity,
``γ·Σ_ℓ [λ1(‖ω−1‖₁ + ‖b‖₁) + λG·√d_ℓ(‖ω−1‖₂ + ‖b‖₂)]``, is applied by a proximal step after
each optimiser step; γ > 0 switches single units and whole sites off.

Training follows the reference code (METHODS.md §5.7; :mod:`steerinterp.train`): Adam (betas
0.9, 0.9), lr 1e-3, cosine to lr·1e-3, 1000 steps, source batches of 20, every target sample
each step, per site the mean over units and the sites averaged; the prox after each optimiser
step uses the scheduler's lr as step size, and support counts |Δ| > 1e-5. Thresholds: L1 at
lr·γ·λ1, then the group shrink at lr·γ·λG·√d with ω and b separate groups (these two details
from METHODS.md §5.7; the reference's proximal.py was not readable).
Deliberate differences: unequal source/target counts are matched by Hazen quantiles (the
reference's loss file was not readable), so a target smaller than the batch is allowed (the
reference refuses it) and only < 2 target samples are an error; the default batch is clipped
to a source set smaller than 20 (an explicit larger one is an error); γ·λ replaces the
reference's separate weight/bias λs. Inference: ``z + λ(ω z + b − z)``, λ ∈ [0, 1].

Sparsity under Adam: Adam moves every coordinate by ~lr whatever its gradient's size, so the
prox at τ = lr hardly depends on the data; with λ1 = λG = 1 every site is zeroed once γ ≥ 0.5
(first step: L1 leaves lr(1 − γ) per unit, the group threshold is lr·γ·√d). γ paths tuned for
SGD (thresholds ∝ gradient scale) do not carry over; use ``optimizer="sgd"`` for them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from ..collection import validate_lengths, validate_texts
from ..store import ActivationStore
from ..tokens import token_ids
from ..provenance import same_model
from ..train import (DEFAULT_LR, TrainSettings, group_soft_threshold, recipe_problem,
                     resolve_batch, soft_threshold, train)
from .affine import AffineSteerer
from .apply import steered
from .base import SteerConfig, SteerError, register
from .lineas_report import SUPPORT_THRESHOLD, LineasReport  # noqa: F401  (threshold re-exported)


@dataclass(frozen=True)
class LineasConfig(SteerConfig):
    steps: int = 1000  # paper and reference: 1K steps in the low-data regime (N = 32)
    lr: float | None = None  # None: 1e-3 with adam (reference), 0.1 with sgd (paper §3.3)
    optimizer: str = "adam"  # "adam": betas (0.9, 0.9), no weight decay; "sgd": plain SGD
    lr_floor: float = 1e-3  # cosine decay to lr·lr_floor (reference); 0: to zero
    loss: str = "mean"  # "mean" (reference), "normalize" (1/(d·E[η²]) weights), "sum" (paper)
    target_batch: str = "full"  # "full": all target samples each step; "minibatch": as many
    minibatch: int | None = None  # source texts per step (>= 4); None: min(20, n_source)
    gamma: float = 0.0  # sparsity knob; the toxicity tables use 0
    lambda1: float = 1.0
    lambda_group: float = 1.0
    seed: int = 0
    precision: str = "fp32"  # "bf16": autocast the forward/backward (train.py docstring)
    normalize: bool | None = None  # deprecated: only configs saved before the reference recipe

    def __post_init__(self) -> None:
        if self.normalize is not None:  # an old save: record the recipe it was trained with
            legacy = dict(optimizer="sgd", lr_floor=0.0, target_batch="minibatch",
                          loss="normalize" if self.normalize else "sum", normalize=None)
            for key, value in legacy.items():
                object.__setattr__(self, key, value)
        problem = recipe_problem(self.steps, self.lr, self.optimizer, self.lr_floor, self.loss,
                                 self.target_batch, self.minibatch, self.precision)
        if problem:
            raise SteerError(f"lineas {problem}")
        if min(self.gamma, self.lambda1, self.lambda_group) < 0:
            raise SteerError("lineas gamma, lambda1 and lambda_group must be >= 0")

    def train_settings(self) -> TrainSettings:
        """These options as the loop's settings (lr resolved per optimiser)."""
        return TrainSettings(steps=self.steps, lr=self.lr or DEFAULT_LR[self.optimizer],
                             batch_size=self.minibatch, seed=self.seed, optimizer=self.optimizer,
                             lr_floor=self.lr_floor, loss=self.loss, target=self.target_batch,
                             precision=self.precision)


@register
class Lineas(LineasReport, AffineSteerer):
    """LinEAS maps at every site, trained end to end. ``fit(model, source_texts, target)``:
    the source must be texts (they run through the steered model with gradients); the target
    may be texts or a mean-pooled store. Each step compares a source batch of ``minibatch``
    texts with every target sample (``target_batch="full"``), so the sizes may differ."""

    method = "lineas"
    Config = LineasConfig

    def fit(self, model: HookedTransformer, source, target=None, *, control=None) -> Lineas:
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
        settings = self.config.train_settings()
        try:
            batch = resolve_batch(settings.batch_size, len(ids), tgt.n, settings.target)
        except ValueError as err:
            raise SteerError(f"lineas {err}") from None
        settings = dataclasses.replace(settings, batch_size=batch)
        for site in sites:
            width = site.width(model)
            self.set_tensor(site, "omega", torch.ones(width), trainable=True)
            self.set_tensor(site, "bias", torch.zeros(width), trainable=True)
        self.record_provenance(model, sites, len(texts), tgt.n, t0)  # steered() needs it
        self.to(model.cfg.device)
        self.snapshots = {}
        with steered(model, self, strength=1.0):
            self.loss_curve = train(model, list(self.tensors.values()), ids, tgt, sites,
                                    settings, prox=self.prox, desc="lineas",
                                    on_step=self._snapshot if self.snapshot_at else None)
        for p in self.tensors.values():
            p.requires_grad_(False)
        self.record_provenance(model, sites, len(texts), tgt.n, t0)
        self.provenance = self.provenance.replace(train=dataclasses.asdict(settings))  # lr, batch
        return self

    def prox(self, lr: float) -> None:
        """Sparse-group-lasso proximal step on ω − 1 and b, per site (LinEAS Alg. 1): L1
        soft-threshold at lr·γ·λ1, then the group shrink at lr·γ·λG·√d, ω and b being separate
        groups; ``lr`` is the scheduler's current lr, as in the reference."""
        g = self.config.gamma
        if g == 0:
            return
        for site in self.sites:
            width = self.provenance.widths[site]
            t_group = lr * g * self.config.lambda_group * math.sqrt(width)
            for name, centre in (("omega", 1.0), ("bias", 0.0)):
                p = self.tensor(site, name)
                v = soft_threshold(p - centre, lr * g * self.config.lambda1)
                p.copy_(group_soft_threshold(v, t_group) + centre)

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
        if not isinstance(other, Lineas) or not same_model(other.provenance.model,
                                                            self.provenance.model):
            raise SteerError("compose() needs another lineas steerer fitted on the same model")
        out = self._like(self)
        sites = sorted(set(self.sites) | set(other.sites))
        out.provenance = self.provenance.replace(
            sites=tuple(sites), widths={**self.provenance.widths, **other.provenance.widths})
        for site in sites:
            w1, b1 = self.affine(site)
            w2, b2 = other.affine(site)
            width = out.provenance.widths[site]
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
        out.provenance = src.provenance
        return out
