"""The one end-to-end optimisation loop (LinEAS, E2E-DSAS).

The model is frozen; only the steerer's trainable tensors move. Each step sends a source batch
through the *steered* model with gradients, mean-pools the steered activations at every site,
and compares them with target activations pooled once from the unsteered model (a store) by
the per-unit squared 1-D Wasserstein distance of sorted samples (LinEAS, Rodriguez et al.,
NeurIPS'25, §3.1; METHODS.md §5.2).

The default recipe is the reference code's (``JDIXON-2/ml-lineas``, ``End2EndEstimator.fit`` and
``configs/intervention_params/lineas.yaml``; METHODS.md §5.7): Adam with betas (0.9, 0.9) and
no weight decay, lr 1e-3, ``CosineAnnealingLR`` down to lr·1e-3; source batches of 20 from a
reshuffled, cycling loader (full batches only); *all* target samples every step; per site the
mean over units, sites averaged; then the optional proximal step at the scheduler's current lr.
Named alternatives (the recipe before issue 12): ``optimizer="sgd"`` (plain SGD, lr 0.1),
``lr_floor=0`` (cosine to 0), ``loss="normalize"`` or ``"sum"``, ``target="minibatch"``.

``precision="bf16"`` runs the model's forward and backward under bfloat16 autocast (the
steerer's tensors, the pooled activations and the W2 loss stay float32). It is our addition,
not the reference's: on gemma-3-270m on a 2-core CPU it halves the step, and the 250-step fit
it gives matches the float32 one in held-out W2, toxicity and perplexity
(``figures/lineas_convergence.csv``, rows ``precision == "bf16"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from .collection import pool_tokens
from .hooks import last_layer, recording
from .metrics import w2_sorted
from .sites import Site, site_device
from .store import ActivationStore
from .tokens import pad_left

OPTIMIZERS = ("adam", "sgd")
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.1}  # reference lineas.yaml; paper §3.3 (proximal SGD)
ADAM_BETAS = (0.9, 0.9)  # reference lineas.yaml (torch's default β2 is 0.999)
LOSSES = ("mean", "normalize", "sum")
TARGETS = ("full", "minibatch")
PRECISIONS = ("fp32", "bf16")  # the forward/backward's compute dtype (module docstring)
DEFAULT_BATCH = 20  # reference text_generation.yaml: interventions.batch_size
MIN_BATCH = 4  # reference End2EndEstimator.fit refuses smaller batches ("stable training")
MIN_TARGET = 2  # fewer target samples leave no distribution to match quantiles against
PLATEAU_SHARE = 0.1  # plateau(): the share of the summed lr whose steps are inspected
PLATEAU_TOL = 0.01  # plateau(): |relative change| below this counts as converged


class TrainingError(RuntimeError):
    """Training diverged (NaN/inf loss or parameters)."""


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    lr: float = DEFAULT_LR["adam"]
    batch_size: int | None = None  # source texts per step; None: min(20, n_source)
    seed: int = 0
    skip_first: bool = True
    optimizer: str = "adam"
    lr_floor: float = 1e-3  # cosine decays to lr·lr_floor (reference: dampen_lr); 0: to 0
    # "mean": per site the mean over units of W2², sites averaged (reference). "normalize":
    # each unit's W2² weighted by 1 / (d·max(E[η²], 1)), summed (see standardising_weights).
    # "sum": the paper's plain sum over units and sites (§3.1).
    loss: str = "mean"
    target: str = "full"  # "full": every target sample each step; "minibatch": batch_size of them
    precision: str = "fp32"  # "bf16": autocast forward/backward (module docstring)

    def __post_init__(self) -> None:
        problem = recipe_problem(self.steps, self.lr, self.optimizer, self.lr_floor, self.loss,
                                 self.target, self.batch_size, self.precision)
        if problem:
            raise ValueError(problem)


def recipe_problem(steps: int, lr: float | None, optimizer: str, lr_floor: float, loss: str,
                   target: str, batch_size: int | None,
                   precision: str = "fp32") -> str | None:
    """What is wrong with these training options (one line), or None."""
    for value, allowed, what in ((optimizer, OPTIMIZERS, "optimizer"), (loss, LOSSES, "loss"),
                                 (target, TARGETS, "target batch"),
                                 (precision, PRECISIONS, "precision")):
        if value not in allowed:
            return f"unknown {what} {value!r}; use one of {', '.join(allowed)}"
    if steps < 1 or (lr is not None and not lr > 0) or not 0 <= lr_floor <= 1:
        return f"needs steps >= 1, lr > 0 and lr_floor in [0, 1]; got {steps}, {lr}, {lr_floor}"
    if batch_size is not None and batch_size < MIN_BATCH:
        return (f"source batch must be >= {MIN_BATCH} (sorted-sample W2 is unstable below, as "
                f"in the reference), got {batch_size}")
    return None


def resolve_batch(batch_size: int | None, n_source: int, n_target: int, target: str) -> int:
    """The source batch for these set sizes (``None``: ``min(20, n_source)``); ValueError on
    sets too small for the recipe. With ``target="full"`` a batch larger than the target set is
    fine (quantile matching); ``"minibatch"`` draws equal counts, so the batch is clipped to it."""
    if n_source < MIN_BATCH:
        raise ValueError(f"needs at least {MIN_BATCH} source texts (the smallest batch), "
                         f"got {n_source}")
    if n_target < MIN_TARGET:
        raise ValueError(f"needs at least {MIN_TARGET} target samples to match quantiles "
                         f"against, got {n_target}")
    if batch_size is not None and batch_size > n_source:
        raise ValueError(f"source batch {batch_size} is larger than the source set "
                         f"({n_source} texts); pass minibatch <= {n_source}")
    batch = min(DEFAULT_BATCH, n_source) if batch_size is None else batch_size
    return min(batch, n_target) if target == "minibatch" else batch


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
    with gradients; the pass stops after the last site's layer."""
    batch = pad_left(model, ids, skip_first)
    out: dict[Site, torch.Tensor] = {}

    def read(site: Site, units: torch.Tensor) -> None:
        out[site] = pool_tokens(units.float(), batch.pool_mask, "mean")

    with recording(model, sites, read):  # entered inside the caller's steered(): steered values
        model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=last_layer(sites))
    return out


# -- the loss ------------------------------------------------------------------------------------
def matched_sorted(x: Float[torch.Tensor, "n d"], k: int) -> Float[torch.Tensor, "d k"]:
    """Each unit's Hazen quantiles at the k probabilities (i + ½)/k, the rule
    :func:`~steerinterp.metrics.sorted_affine_fit` uses for unequal counts: for n = k the sorted
    samples themselves, else linear interpolation between them (constant beyond the ends).
    Differentiable; kept in ``x``'s dtype (float64 does not exist on every accelerator)."""
    s = torch.sort(x.T.contiguous(), dim=1).values  # a contiguous last dim sorts ~5× faster
    n = x.shape[0]
    if n == k:
        return s
    pos = ((torch.arange(k, dtype=torch.float64) + 0.5) * n / k - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo).to(device=x.device, dtype=x.dtype)
    return s[:, lo.to(x.device)] * (1 - w) + s[:, hi.to(x.device)] * w


def w2_to_quantiles(u: Float[torch.Tensor, "n d"], v_q: Float[torch.Tensor, "d k"]
                    ) -> Float[torch.Tensor, "d"]:
    """Per-unit squared W2 between sample ``u`` and target quantiles ``v_q`` (from
    :func:`matched_sorted`): ``mean_i (Q_u(p_i) − v_q[:, i])²``."""
    return (matched_sorted(u, v_q.shape[1]) - v_q).pow(2).mean(1)


def w2_matched(u: Float[torch.Tensor, "n d"], v: Float[torch.Tensor, "m d"]
               ) -> Float[torch.Tensor, "d"]:
    """Per-unit squared 1-D W2 between samples of any sizes, both read as Hazen quantiles at
    k = max(n, m) probabilities; for n = m exactly :func:`~steerinterp.metrics.w2_sorted`."""
    v = v.to(device=u.device, dtype=u.dtype)
    return w2_to_quantiles(u, matched_sorted(v, max(u.shape[0], v.shape[0])))


def standardising_weights(target: ActivationStore, sites: list[Site],
                          devices: dict[Site, torch.device] | torch.device | str
                          ) -> dict[Site, torch.Tensor]:
    """``1 / (d · max(E[η²], 1))`` per unit (η: pooled target activations, d: site width),
    for ``loss="normalize"``.

    The second-moment factor bounds each unit's curvature in both ω (∝ E[z²]) and b whatever the
    site's activation scale, which plain SGD at lr 0.1 needs (gemma-3-270m: mean |x| from 0.5 at
    L0 to 110 at L17); Adam's steps do not scale with the gradient, so the default needs none."""
    out = {}
    for site in sites:
        second_moment = target[site].double().pow(2).mean(0).clamp_min(1.0)
        device = devices[site] if isinstance(devices, dict) else devices
        out[site] = (1.0 / (second_moment * second_moment.numel())).float().to(device)
    return out


def site_terms(per_unit: dict[Site, torch.Tensor], loss: str,
               weight: dict[Site, torch.Tensor] | None = None) -> dict[Site, torch.Tensor]:
    """Each site's term from its per-unit W2²: the mean over units (``mean``), the weighted sum
    (``normalize``) or the sum (``sum``)."""
    if loss == "mean":
        return {s: v.mean() for s, v in per_unit.items()}
    if loss == "normalize":
        return {s: (v * weight[s]).sum() for s, v in per_unit.items()}
    return {s: v.sum() for s, v in per_unit.items()}


def total(terms: dict, loss: str) -> torch.Tensor:
    """Sites averaged (``mean``, as the reference's ``module_loss / n_modules``) or summed."""
    # One device for the sum: a model split over GPUs gives each site's term on its block's.
    first = next(iter(terms.values()))
    out = sum(t.to(first.device) for t in terms.values())
    return out / len(terms) if loss == "mean" else out


class _Objective:
    """The fixed half of the loss: target samples (or their quantiles) per site, on device."""

    def __init__(self, target: ActivationStore, sites: list[Site], settings: TrainSettings,
                 batch: int, devices: dict[Site, torch.device], gen: torch.Generator) -> None:
        self.settings, self.batch, self.gen, self.n_target = settings, batch, gen, target.n
        self.eta = {s: target[s].to(device=devices[s], dtype=torch.float32) for s in sites}
        if settings.target == "full":  # sorted once: the target never changes
            k = max(batch, target.n)
            self.eta = {s: matched_sorted(v, k) for s, v in self.eta.items()}
        self.weight = (standardising_weights(target, sites, devices)
                       if settings.loss == "normalize" else None)

    def terms(self, pooled: dict[Site, torch.Tensor]) -> dict[Site, torch.Tensor]:
        if self.settings.target == "full":
            per_unit = {s: w2_to_quantiles(pooled[s], self.eta[s]) for s in pooled}
        else:
            idx = torch.randperm(self.n_target, generator=self.gen)[:self.batch]
            per_unit = {s: w2_sorted(pooled[s], self.eta[s][idx.to(self.eta[s].device)])
                        for s in pooled}
        return site_terms(per_unit, self.settings.loss, self.weight)


# -- the loop ------------------------------------------------------------------------------------
def cycling_batches(n: int, size: int, gen: torch.Generator) -> Iterator[list[int]]:
    """Index batches of ``size`` from a loader reshuffled on every pass, full batches only
    (like a ``DataLoader(shuffle=True, drop_last=True)`` cycled forever, as the reference)."""
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        for start in range(0, n - size + 1, size):
            yield order[start:start + size]


def make_optimizer(params: list[torch.Tensor], settings: TrainSettings):
    """Torch's own Adam / SGD and ``CosineAnnealingLR(T_max=steps, eta_min=lr·lr_floor)``."""
    if settings.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=settings.lr, betas=ADAM_BETAS, weight_decay=0.0)
    else:
        opt = torch.optim.SGD(params, lr=settings.lr)  # plain, as the reference's SGD option
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=settings.steps, eta_min=settings.lr * settings.lr_floor)
    return opt, sched


def train(model: HookedTransformer, params: list[torch.Tensor], source_ids: list[list[int]],
          target: ActivationStore, sites: list[Site], settings: TrainSettings,
          prox: Callable[[float], None] | None = None,
          extra_loss: Callable[[], dict[str, torch.Tensor]] | None = None,
          desc: str = "train", on_step: Callable[[int], None] | None = None) -> list[dict]:
    """Run the loop; the caller has already attached its steerer with ``steered()``.

    ``prox(lr)`` is applied after each optimiser step with the lr that step used (the
    reference's ``tau = scheduler.get_last_lr()``); ``extra_loss()`` may add named terms
    (E2E-DSAS's control term); ``on_step(k)`` runs after the k-th step (k = 1..steps) is
    complete, prox included (snapshots for convergence curves). Returns the loss curve, one dict per step (``step``, ``lr``,
    ``loss``, ``w2`` and the extra terms). ValueError on sets too small for the batch.
    """
    gen = torch.Generator().manual_seed(settings.seed)
    batch = resolve_batch(settings.batch_size, len(source_ids), target.n, settings.target)
    objective = _Objective(target, sites, settings, batch,
                           {s: site_device(model, s) for s in sites}, gen)
    optimizer, scheduler = make_optimizer(params, settings)
    batches = cycling_batches(len(source_ids), batch, gen)
    curve = []
    bar = tqdm(range(settings.steps), desc=desc, disable=settings.steps < 2)
    with frozen(model), torch.enable_grad():
        for step in bar:
            with compute_dtype(model, settings.precision):
                pooled = pooled_forward(model, [source_ids[i] for i in next(batches)], sites,
                                        settings.skip_first)
            terms = objective.terms(pooled)
            w2 = total(terms, settings.loss)
            extra = extra_loss() if extra_loss is not None else {}
            loss = w2 + sum(extra.values())
            _check_finite(step, loss, terms, extra)
            lr = scheduler.get_last_lr()[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if prox is not None:
                with torch.no_grad():
                    prox(lr)
            scheduler.step()
            curve.append({"step": step, "lr": lr, "loss": loss.item(), "w2": w2.item(),
                          **{k: v.item() for k, v in extra.items()}})
            bar.set_postfix(loss=f"{curve[-1]['loss']:.4g}")
            if on_step is not None:
                on_step(step + 1)
    return curve


def compute_dtype(model: HookedTransformer, precision: str):
    """bfloat16 autocast on the model's device for ``"bf16"``; nothing for ``"fp32"``. Only the
    forward runs inside it (autograd replays the casts in the backward)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(model.cfg.device).type, dtype=torch.bfloat16)


def _check_finite(step: int, loss: torch.Tensor, terms: dict, extra: dict) -> None:
    if torch.isfinite(loss):
        return
    bad = [str(s) for s, v in terms.items() if not torch.isfinite(v)]
    bad += [k for k, v in extra.items() if not torch.isfinite(v)]
    raise TrainingError(
        f"loss became {loss.item()} at step {step} (non-finite at: {', '.join(bad) or 'sum'}); "
        "the learning rate is probably too high — lower lr (e.g. by 10×) and refit")


def plateau(curve: list[dict] | pd.DataFrame, share: float = PLATEAU_SHARE,
            tol: float = PLATEAU_TOL) -> dict:
    """Did the training loss level off? ``rel_change`` is the relative fall of the mean loss
    from the first to the second half of the final steps that spend the last ``share`` (10%)
    of the run's summed learning rate (> 0: still falling); ``converged`` = ``|rel_change| <
    tol`` (1%). Also ``window`` (steps inspected), ``steps``, ``share``, ``tol``.

    At a constant lr this is the last 10% of steps. Under the cosine schedule the last 10% of
    steps get < 2.5% of the peak lr, so their loss is flat by construction even when the fit is
    far from converged (seen on the tiny model: 60 Adam steps at 1e-3); the lr-weighted window
    (the last ~40% of a cosine run) asks instead whether the last tenth of the optimisation
    effort still paid. Halves of a window rather than single steps: each step's loss is one
    random source batch.
    """
    rows = curve.to_dict("records") if isinstance(curve, pd.DataFrame) else list(curve)
    out = {"steps": len(rows), "window": 0, "share": share, "tol": tol,
           "rel_change": float("nan"), "converged": False}
    if len(rows) < 2:
        return out
    lrs = [r.get("lr", 1.0) for r in rows]
    spent, n = 0.0, 0
    while n < len(rows) and spent < share * sum(lrs):
        n += 1
        spent += lrs[-n]
    tail = [r["loss"] for r in rows[-max(n, 2):]]
    first, second = tail[:len(tail) // 2], tail[len(tail) // 2:]
    a, b = sum(first) / len(first), sum(second) / len(second)
    rel = (a - b) / abs(a) if a != 0 else 0.0
    return dict(out, window=len(tail), rel_change=rel, converged=bool(abs(rel) < tol))


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
