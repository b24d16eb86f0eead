"""E2E-DSAS training: DSAS gates and LinEAS maps trained jointly (METHODS.md §6; LinEAS,
Rodriguez et al., NeurIPS'25, for the maps and the loop).

Same loop, optimiser, schedule and W2 reduction as LinEAS (:mod:`steerinterp.train`; default:
the reference recipe, Adam lr 1e-3, cosine to lr·1e-3, all targets each step, means over units
and sites), plus a control term [GUESS] that keeps the steered activations of neutral control
texts ξ_ℓ(C) at the untouched model's η_ℓ(C), reduced like the W2 term: with ``loss="mean"``
``μ·mean_ℓ mean_{texts, units} (ξ − η)²``; otherwise ``μ·Σ_ℓ mean_texts ‖ξ − η‖²`` (as before).
"""

from __future__ import annotations

import dataclasses

import time

import torch
from transformer_lens import HookedTransformer

from ..collection import collect, validate_texts
from ..sites import Site
from ..store import ActivationStore
from ..train import (DEFAULT_LR, TrainSettings, compute_dtype, pooled_forward, resolve_batch,
                     train)
from .apply import steered
from .base import SteerError, make


def _control_term(model: HookedTransformer, ctl_ids: list[list[int]], eta: dict,
                  sites: list[Site], batch: int, mu: float, loss: str, seed: int,
                  precision: str = "fp32"):
    """``control()`` → ``{"control": μ·err}`` on a fresh random batch of control texts."""
    gen = torch.Generator().manual_seed(seed + 1)
    n_c = min(batch, len(ctl_ids))

    def control() -> dict[str, torch.Tensor]:
        idx = torch.randperm(len(ctl_ids), generator=gen)[:n_c]
        with compute_dtype(model, precision):
            xi = pooled_forward(model, [ctl_ids[i] for i in idx.tolist()], sites)
        sq = {s: (xi[s] - eta[s][idx.to(eta[s].device)]) ** 2 for s in sites}
        if loss == "mean":
            err = sum(v.mean() for v in sq.values()) / len(sites)
        else:
            err = sum(v.sum(-1).mean() for v in sq.values())
        return {"control": mu * err}

    return control


def train_e2e(dsas, model: HookedTransformer, source, target, control,
              sites: list[Site]) -> list[dict]:
    """Train ``dsas``'s active gates (initialised from the probe fit) and its LinEAS base's maps
    on ``source`` → ``target`` plus the control term; returns the loss curve. Inactive sites'
    gates stay off; LinEAS's prox (the base's ``gamma``) applies to the maps."""
    cfg = dsas.config
    if target is None or any(isinstance(d, ActivationStore) for d in (source, control)):
        raise SteerError("e2e dsas needs source and control texts (they run through the "
                         "steered model) and a target set")
    ids, ctl_ids = (dsas._ids(model, d) for d in (source, control))
    tgt = dsas.as_store(model, target, sites, "target")
    settings = TrainSettings(steps=cfg.steps, lr=cfg.lr or DEFAULT_LR[cfg.optimizer],
                             batch_size=cfg.minibatch, seed=cfg.seed, optimizer=cfg.optimizer,
                             loss=cfg.loss, precision=cfg.precision)
    try:
        batch = resolve_batch(settings.batch_size, len(ids), tgt.n, settings.target)
    except ValueError as err:
        raise SteerError(f"e2e dsas {err}") from None
    eta = collect(model, validate_texts(control), sites, pool="mean",
                  max_tokens=cfg.max_tokens, batch_size=cfg.batch_size, progress=False)
    eta = {s: eta[s].to(model.cfg.device) for s in sites}
    control_term = _control_term(model, ctl_ids, eta, sites, batch, cfg.mu, cfg.loss, cfg.seed,
                                 cfg.precision)
    dsas.to(model.cfg.device)
    params = [dsas.base.tensor(s, n) for s in sites for n in ("omega", "bias")]
    params += [dsas.tensor(s, n) for s in sites if dsas.probe[str(s)]["active"]
               for n in ("u", "c")]
    for p in params:
        p.requires_grad_(True)
    try:
        with steered(model, dsas, strength=1.0):
            return train(model, params, ids, tgt, sites,
                         dataclasses.replace(settings, batch_size=batch),
                         prox=dsas.base.prox, extra_loss=control_term,
                         desc="dsas-e2e")
    finally:
        for p in params:
            p.requires_grad_(False)


def identity_lineas(model: HookedTransformer, cfg, opts: dict):
    """E2E-DSAS's base before training: LinEAS maps at identity (ω = 1, b = 0) at its sites,
    with the DSAS config's training options."""
    base = make("lineas", steps=cfg.steps, lr=cfg.lr, minibatch=cfg.minibatch, seed=cfg.seed,
                optimizer=cfg.optimizer, loss=cfg.loss, precision=cfg.precision, **opts)
    sites = base.resolve_sites(model)
    for site in sites:
        base.set_tensor(site, "omega", torch.ones(site.width(model)))
        base.set_tensor(site, "bias", torch.zeros(site.width(model)))
    base.record_provenance(model, sites, 0, 0, time.perf_counter())
    return base
