"""The one end-to-end optimisation loop (LinEAS, E2E-DSAS).

The model is frozen; only the steerer's trainable tensors move. Each step sends a source
minibatch through the *steered* model with gradients, mean-pools the steered activations at
every site, and compares them with target activations pooled once from the unsteered model
(a store) by the per-unit squared 1-D Wasserstein distance of sorted samples (LinEAS §3.1,
METHODS.md §5.2). Plain SGD with cosine learning-rate decay, then an optional proximal step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from .collection import pool_tokens
from .metrics import w2_sorted
from .sites import Site, to_units
from .store import ActivationStore
from .tokens import pad_left


class TrainingError(RuntimeError):
    """Training diverged (NaN/inf loss or parameters)."""


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    lr: float = 0.1
    batch_size: int = 32
    seed: int = 0
    skip_first: bool = True
    # Weight each unit's W2² by 1 / (d·max(E[η²], 1)) (see standardising_weights) instead of the
    # paper's plain sum: real models' activations span orders of magnitude across sites
    # (gemma-3-270m: mean |x| from 0.5 at L0 to 110 at L17) and the plain sum at lr 0.1
    # diverges on the first step there.
    normalize: bool = True


@contextmanager
def frozen(model: HookedTransformer):
    """Turn off gradients for the model's own weights (restored on exit): backprop then only
    pays for activations, never for 270M weight gradients."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def pooled_forward(model: HookedTransformer, ids: list[list[int]], sites: list[Site],
                   skip_first: bool = True) -> dict[Site, torch.Tensor]:
    """Mean-pooled activations at ``sites`` as the (possibly steered) model produces them,
    with gradients. Recording hooks are added after any steering hooks at the same site, so
    they see the steered value; the pass stops after the last site's layer."""
    batch = pad_left(model, ids, skip_first)
    out: dict[Site, torch.Tensor] = {}

    def record(site: Site):
        def hook(acts, hook):
            out[site] = pool_tokens(to_units(site, acts).float(), batch.pool_mask, "mean")
        return hook

    with model.hooks(fwd_hooks=[(s.hook_name, record(s)) for s in sites]):
        model(batch.tokens, attention_mask=batch.attention_mask,
              stop_at_layer=max(s.layer for s in sites) + 1)
    return out


def w2_loss(pooled: dict[Site, torch.Tensor], target: dict[Site, torch.Tensor],
            weight: dict[Site, torch.Tensor] | None = None) -> dict[Site, torch.Tensor]:
    """Per site: the squared W2 between the two pooled samples, summed over units (LinEAS Δ),
    each unit's term multiplied by ``weight`` when given."""
    if weight is None:
        return {site: w2_sorted(pooled[site], target[site]).sum() for site in pooled}
    return {site: (w2_sorted(pooled[site], target[site]) * weight[site]).sum()
            for site in pooled}


def standardising_weights(target: ActivationStore, sites: list[Site], device
                          ) -> dict[Site, torch.Tensor]:
    """``1 / (d · max(E[η²], 1))`` per unit (η: pooled target activations, d: site width).

    The second-moment factor bounds each unit's curvature in both ω (∝ E[z²]) and b whatever the
    site's activation scale; the 1/d makes each site's term a mean over its units, so the early
    maps, whose gradient collects every later site's term, are not pushed d times too far."""
    out = {}
    for site in sites:
        second_moment = target[site].double().pow(2).mean(0).clamp_min(1.0)
        out[site] = (1.0 / (second_moment * second_moment.numel())).float().to(device)
    return out


def cosine_lr(lr: float, step: int, steps: int) -> float:
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / max(steps, 1)))


def train(model: HookedTransformer, params: list[torch.Tensor], source_ids: list[list[int]],
          target: ActivationStore, sites: list[Site], settings: TrainSettings,
          prox: Callable[[float], None] | None = None,
          extra_loss: Callable[[], dict[str, torch.Tensor]] | None = None,
          desc: str = "train") -> list[dict]:
    """Run the loop; the caller has already attached its steerer with ``steered()``.

    ``prox(step_size)`` is applied after each SGD step; ``extra_loss()`` may add named terms
    (E2E-DSAS's control term). Returns the loss curve, one dict per step. Source and target
    minibatches have the same size ``min(batch_size, n_source, n_target)``, because W2 of
    sorted samples pairs them one to one; each is drawn without replacement per step.
    """
    gen = torch.Generator().manual_seed(settings.seed)
    n = min(settings.batch_size, len(source_ids), target.n)
    tgt_all = {s: target[s].to(model.cfg.device) for s in sites}
    weight = (standardising_weights(target, sites, model.cfg.device) if settings.normalize
              else None)
    curve = []
    bar = tqdm(range(settings.steps), desc=desc, disable=settings.steps < 2)
    with frozen(model), torch.enable_grad():
        for step in bar:
            src_idx = torch.randperm(len(source_ids), generator=gen)[:n].tolist()
            tgt_idx = torch.randperm(target.n, generator=gen)[:n]
            pooled = pooled_forward(model, [source_ids[i] for i in src_idx], sites,
                                    settings.skip_first)
            terms = w2_loss(pooled, {s: tgt_all[s][tgt_idx] for s in sites}, weight)
            extra = extra_loss() if extra_loss is not None else {}
            loss = sum(terms.values()) + sum(extra.values())
            _check_finite(step, loss, terms, extra)
            for p in params:
                p.grad = None
            loss.backward()
            lr = cosine_lr(settings.lr, step, settings.steps)
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p -= lr * p.grad
                if prox is not None:
                    prox(lr)
            record = {"step": step, "lr": lr, "loss": loss.item(),
                      "w2": float(sum(t.item() for t in terms.values())),
                      **{k: v.item() for k, v in extra.items()}}
            curve.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4g}")
    return curve


def _check_finite(step: int, loss: torch.Tensor, terms: dict, extra: dict) -> None:
    if torch.isfinite(loss):
        return
    bad = [str(s) for s, v in terms.items() if not torch.isfinite(v)]
    bad += [k for k, v in extra.items() if not torch.isfinite(v)]
    raise TrainingError(
        f"loss became {loss.item()} at step {step} (non-finite at: {', '.join(bad) or 'sum'}); "
        "the learning rate is probably too high — lower lr (e.g. by 10×) and refit")


def soft_threshold(v: torch.Tensor, t: float) -> torch.Tensor:
    """``sign(v)·max(|v| − t, 0)``: the prox of ``t·‖·‖₁`` (LinEAS Alg. 1)."""
    return torch.sign(v) * torch.clamp(v.abs() - t, min=0.0)


def group_soft_threshold(v: torch.Tensor, t: float) -> torch.Tensor:
    """``max(0, 1 − t/‖v‖₂)·v``: the prox of ``t·‖·‖₂``; a group with ``‖v‖ ≤ t`` (including
    the all-zero group, where the ratio is undefined) becomes exactly zero."""
    norm = v.norm()
    if norm <= t:
        return torch.zeros_like(v)
    return (1.0 - t / norm) * v
