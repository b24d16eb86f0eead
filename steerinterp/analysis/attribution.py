"""How much of the steering effect each site and each unit carries (interpretability item 5).

**Effect.** On held-out texts of the concept steering removes (e.g. toxic text),

    effect = mean_texts( mean_tokens log p_unsteered − mean_tokens log p_steered )   [nats/token]

positive when steering makes the text less likely. Each text's first ``max_tokens`` tokens are
used (BOS prepended iff the model's default, as :func:`steerinterp.tokens.token_ids`) and every
token after the first is scored. On ``neutral_texts`` the same number is the *cost*.

**Sites** (:func:`attribute`, ``level="site"``): the effect with only one site steered and with
every site but one, through :class:`Restricted` views of the steerer. Both are exact (no
linearisation); they disagree when sites interact.

**Units** (``level="unit"``): gradient × delta, a first-order ("attribution patching")
estimate. For unit ``i`` of site ``s``: ``Σ_texts Σ_positions ∂J/∂z'_i · (z'_i − z_i)`` with
``J`` the mean token NLL averaged over texts, ``z'`` the steered activation and ``z`` the
*input of the steering map at s in the same steered run*, i.e. already moved by steering at
earlier sites. With that choice the per-site deltas telescope, so the attributions summed over
all units and sites are the first-order estimate of ``effect_all`` (gradient at the steered
point); ``frame.attrs`` holds both numbers.

The gradient at the steered point misses curvature. ``steps > 1`` integrates along the strength
instead (integrated gradients over λ, midpoint rule): every method's map is linear in λ at a
fixed input (``z' = z + λ·(f(z) − z)``, vector additions, DSAS gates), so
``d effect/dλ = Σ_sites ∂J/∂z'·(z' − z)/λ``, and the λ-weighted sum over runs steered at
``λ_j = λ·(j + ½)/steps`` makes the attributions add up to ``effect_all`` as steps grow.
:func:`validate_units` checks the ranking causally by un-steering top units.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from ..evaluate.logits import batch_nll, scored_logp
from ..sites import Site
from ..steer.apply import steered
from ..steer.base import Steerer, check_sites
from ..steer.restricted import Restricted
from ..tokens import ids_with_next_token

__all__ = ["SITE_COLUMNS", "UNIT_COLUMNS", "VALIDATION_COLUMNS", "Restricted", "attribute",
           "validate_units"]

SITE_COLUMNS = ["site", "layer", "point", "effect_only", "effect_without", "effect_all",
                "share_only", "share_drop", "cost_only", "cost_without", "cost_all"]
UNIT_COLUMNS = ["site", "layer", "point", "unit", "attribution", "rank", "abs_attribution",
                "neutral_attribution"]
VALIDATION_COLUMNS = ["k", "selection", "draw", "effect_remaining", "effect_all"]


class _Tape(Restricted):
    """The full view of ``base`` that keeps, for every hook call, the steered output (inside the
    autograd graph) and its detached delta from the input. A site hooked several times per
    forward pass (``ln1``: query, key and value) gets one record per call; their gradients are
    the partial derivatives, so summing grad·delta over the calls gives the site's total."""

    def __init__(self, base: Steerer) -> None:
        super().__init__(base)
        self.records: dict[Site, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)

    def steer(self, acts, site, strength=None):
        out = super().steer(acts, site, strength)
        if not out.requires_grad:
            # Nothing upstream needs gradients (frozen weights, or a site not downstream of
            # the others, e.g. mlp_pre_linear next to mlp_pre): the graph starts here.
            out = out.detach().requires_grad_(True)
        self.records[site].append((out, (out - acts).detach()))
        return out


# --------------------------------------------------------------------------- effects


def _token_ids(model: HookedTransformer, texts, max_tokens: int, what: str) -> list[list[int]]:
    """Token ids of ``texts``; each needs a token after the first (BOS) one to be scored."""
    if isinstance(texts, str):
        raise ValueError(f"{what} must be a list of strings, not a single string")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: attribution needs at least one text")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{what} at positions {bad[:5]} are not strings")
    return ids_with_next_token(model, texts, max_tokens, "attribution scores the tokens after "
                               "the first", what=what)


def _batches(ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices in batches, longest texts first (little padding, early out-of-memory)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _mean_logp(model: HookedTransformer, ids: list[list[int]], steerer: Steerer | None,
               strength: float | None, batch_size: int) -> np.ndarray:
    """Per-text mean token log-probability with ``steerer`` active (None: unsteered)."""
    nll = np.empty(len(ids), dtype=np.float64)
    views = () if steerer is None else (steerer,)
    with steered(model, *views, strength=strength):
        for batch in _batches(ids, batch_size):
            nll[batch] = batch_nll(model, [ids[i] for i in batch]).cpu().numpy()
    return -nll / np.array([len(x) - 1 for x in ids])


class _Effects:
    """``effect(view)`` on a fixed text set, reusing one unsteered pass."""

    def __init__(self, model, ids, strength, batch_size) -> None:
        self.model, self.ids, self.strength, self.batch_size = model, ids, strength, batch_size
        self.unsteered = _mean_logp(model, ids, None, None, batch_size)

    def __call__(self, view: Steerer) -> float:
        if not view.sites:  # nothing steered: no pass needed
            return 0.0
        lp = _mean_logp(self.model, self.ids, view, self.strength, self.batch_size)
        return float(np.mean(self.unsteered - lp))


def _site_frame(model, steerer: Steerer, effects: _Effects, costs: _Effects | None,
                progress: bool) -> pd.DataFrame:
    sites = steerer.sites
    views = [("all", None, Restricted(steerer))]
    views += [(kind, s, Restricted(steerer, [s] if kind == "only" else
                                   [t for t in sites if t != s]))
              for s in sites for kind in ("only", "without")]
    got: dict[tuple, tuple[float, float]] = {}
    for kind, site, view in tqdm(views, desc="site attribution", disable=not progress):
        got[kind, site] = (effects(view), costs(view) if costs is not None else np.nan)
    rows = [{"site": str(s), "layer": s.layer, "point": s.point,
             "effect_only": got["only", s][0], "effect_without": got["without", s][0],
             "effect_all": got["all", None][0], "cost_only": got["only", s][1],
             "cost_without": got["without", s][1], "cost_all": got["all", None][1]}
            for s in sites]
    df = pd.DataFrame(rows)
    total = df["effect_all"].where(df["effect_all"] != 0)  # NaN shares when nothing to share
    df["share_only"] = df["effect_only"] / total
    df["share_drop"] = (df["effect_all"] - df["effect_without"]) / total
    return df[SITE_COLUMNS]


# --------------------------------------------------------------------------- units


def _grad_x_delta(model, steerer: Steerer, ids: list[list[int]], lams: list[float],
                  scale: float, batch_size: int, progress: bool, desc: str
                  ) -> dict[Site, torch.Tensor]:
    """Per site and unit, ``Σ_λ Σ_texts,positions ∂J/∂z' · (z' − z) · scale/λ`` in runs steered
    at each ``λ`` (float64, CPU); J = mean over all ``ids`` of each text's mean token NLL."""
    total = {s: torch.zeros(_width(steerer)(s), dtype=torch.float64) for s in steerer.sites}
    jobs = [(lam, batch) for lam in lams for batch in _batches(ids, batch_size)]
    for lam, batch in tqdm(jobs, desc=desc, disable=not progress):
        chunk = [ids[i] for i in batch]
        n = torch.tensor([len(x) - 1 for x in chunk], dtype=torch.float32)
        tape = _Tape(steerer)
        with torch.enable_grad(), steered(model, tape, strength=lam):
            lp, real = scored_logp(model, chunk, checkpointed=True)
            objective = -(lp / n.to(lp.device)).sum() / len(ids)
        flat = [(s, rec) for s, recs in tape.records.items() for rec in recs]
        grads = torch.autograd.grad(objective, [out for _, (out, _) in flat], allow_unused=True)
        keep = real.unsqueeze(-1)
        for (site, (_, delta)), g in zip(flat, grads):
            if g is not None:  # None: the site does not reach any scored logit
                total[site] += (g * delta * keep).sum((0, 1)).double().cpu() * (scale / lam)
    return total


def _width(steerer: Steerer):
    return lambda s: int(steerer.provenance.widths[s])


def _unit_frame(model, steerer: Steerer, ids, neutral_ids, strength, steps: int,
                batch_size: int, top_k, progress: bool) -> pd.DataFrame:
    lam = steerer.check_strength(steerer.config.strength if strength is None else strength)
    # steps=1: the gradient at the steered point; more: midpoint rule along λ (module doc).
    lams = [lam * (j + 0.5) / steps for j in range(steps)] if steps > 1 else [lam]

    def run(which: list[list[int]], desc: str) -> dict[Site, torch.Tensor]:
        if lam == 0:  # nothing is steered: every delta is 0
            return {s: torch.zeros(_width(steerer)(s), dtype=torch.float64)
                    for s in steerer.sites}
        return _grad_x_delta(model, steerer, which, lams, lam / steps, batch_size, progress,
                             desc)

    attr = run(ids, "unit attribution")
    cost = run(neutral_ids, "unit attribution (neutral)") if neutral_ids is not None else None
    frames = [pd.DataFrame({"site": str(s), "layer": s.layer, "point": s.point,
                            "unit": np.arange(len(a)), "attribution": a.numpy(),
                            "neutral_attribution": cost[s].numpy() if cost else np.nan})
              for s, a in attr.items()]
    df = pd.concat(frames, ignore_index=True)
    df["abs_attribution"] = df["attribution"].abs()
    df["rank"] = df["attribution"].rank(ascending=False, method="first").astype(int)
    df = df.sort_values("rank", ignore_index=True)
    if top_k is not None:
        df = df[df["rank"] <= top_k].reset_index(drop=True)
    df = df[UNIT_COLUMNS]
    df.attrs = {"effect_all": _Effects(model, ids, lam, batch_size)(steerer),
                "attribution_total": float(sum(a.sum() for a in attr.values())),
                "n_units": int(sum(len(a) for a in attr.values())), "steps": steps}
    return df


def attribute(model: HookedTransformer, steerer: Steerer, texts: Sequence[str],
              level: str = "site", strength: float | None = None,
              neutral_texts: Sequence[str] | None = None, top_k: int | None = None,
              max_tokens: int = 64, batch_size: int = 8, steps: int = 1,
              progress: bool = True) -> pd.DataFrame:
    """How much of ``steerer``'s effect on ``texts`` each site or unit carries (module doc).

    ``level="site"`` (exact, 2·n_sites + 1 steered passes), one row per site:
    ``site``, ``layer``, ``point``; ``effect_only`` (only this site steered), ``effect_without``
    (every site but this one), ``effect_all`` (all sites), all in nats/token;
    ``share_only`` = effect_only / effect_all, ``share_drop`` = (effect_all − effect_without) /
    effect_all (NaN when effect_all is 0); ``cost_only``, ``cost_without``, ``cost_all``: the
    same effects on ``neutral_texts`` (NaN without them).

    ``level="unit"`` (gradient × delta; ``steps`` forward + backward passes per batch), one row
    per unit, sorted by rank: ``site``, ``layer``, ``point``, ``unit`` (index at the site);
    ``attribution`` (nats/token; positive: this unit's steering lowers log p of ``texts``),
    ``rank`` (1 = largest attribution), ``abs_attribution``; ``neutral_attribution`` (the same
    on ``neutral_texts``, NaN without them). ``top_k`` keeps only ranks ≤ top_k.
    ``frame.attrs``: ``effect_all``, ``attribution_total`` (sum over all units), ``n_units``,
    ``steps``.

    ``strength`` overrides the steerer's λ; texts are cut to ``max_tokens`` tokens.
    """
    if not isinstance(steerer, Steerer):
        raise TypeError(f"attribute needs a fitted Steerer, got {type(steerer).__name__}")
    steerer.check_model(model)
    if not steerer.sites:
        raise ValueError(f"the {steerer.method} steerer steers no site: nothing to attribute")
    if level not in ("site", "unit"):
        raise ValueError(f"level must be 'site' or 'unit', got {level!r}")
    if top_k is not None and (level != "unit" or int(top_k) < 1):
        raise ValueError(f"top_k (got {top_k!r}) needs level='unit' and a value >= 1")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    ids = _token_ids(model, texts, max_tokens, "texts")
    neutral = (None if neutral_texts is None
               else _token_ids(model, neutral_texts, max_tokens, "neutral_texts"))
    if level == "unit":
        return _unit_frame(model, steerer, ids, neutral, strength, steps, batch_size, top_k,
                           progress)
    effects = _Effects(model, ids, strength, batch_size)
    costs = None if neutral is None else _Effects(model, neutral, strength, batch_size)
    return _site_frame(model, steerer, effects, costs, progress)


# --------------------------------------------------------------------------- validation


def _random_order(steerer: Steerer, seed: int) -> list[tuple[Site, int]]:
    """Every unit of the steerer in a seeded random order; its first k are the random k units,
    so random sets are nested across k like the top ones."""
    units = [(s, u) for s in steerer.sites for u in range(_width(steerer)(s))]
    order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed))
    return [units[i] for i in order.tolist()]


def _ablated(steerer: Steerer, units: list[tuple[Site, int]]) -> Restricted:
    """The steerer with ``units`` un-steered (every other unit as before)."""
    masks: dict[Site, torch.Tensor] = {}
    for site, unit in units:
        if site not in masks:
            masks[site] = torch.ones(_width(steerer)(site), dtype=torch.bool)
        masks[site][unit] = False
    return Restricted(steerer, unit_masks=masks)


def _top_units(steerer: Steerer, frame: pd.DataFrame) -> list[tuple[Site, int]]:
    missing = [c for c in ("site", "unit", "attribution") if c not in frame.columns]
    if missing or frame.empty:
        raise ValueError(f"unit_frame must be attribute(level='unit')'s frame; missing: "
                         f"{missing or 'rows'}")
    sites = check_sites(list(frame["site"].unique()), steerer.sites,
                        f"the {steerer.method} steerer")
    for site in sites:
        units = frame.loc[frame["site"] == str(site), "unit"]
        if units.min() < 0 or units.max() >= _width(steerer)(site):
            raise ValueError(f"unit_frame has units outside 0..{_width(steerer)(site) - 1} "
                             f"at {site}")
    order = frame.sort_values("attribution", ascending=False, kind="stable")
    return [(Site.parse(s), int(u)) for s, u in zip(order["site"], order["unit"])]


def validate_units(model: HookedTransformer, steerer: Steerer, unit_frame: pd.DataFrame,
                   texts: Sequence[str], ks: Sequence[int] = (1, 10, 100), n_random: int = 3,
                   seed: int = 0, strength: float | None = None, max_tokens: int = 64,
                   batch_size: int = 8, progress: bool = True) -> pd.DataFrame:
    """Un-steer the top-``k`` units of ``unit_frame`` (largest attribution), or ``k`` units drawn
    uniformly from all the steerer's units (``n_random`` draws, draw ``d`` seeded ``seed + d``
    and nested across k), and measure the effect on ``texts`` that remains. If the attribution
    ranks units well, top units remove more.

    Columns: ``k``; ``selection`` ("top" or "random"); ``draw`` (0 for top, 0..n_random−1);
    ``effect_remaining`` (nats/token, with those units un-steered); ``effect_all`` (nothing
    un-steered).
    """
    if not isinstance(steerer, Steerer):
        raise TypeError(f"validate_units needs a fitted Steerer, got {type(steerer).__name__}")
    steerer.check_model(model)
    top = _top_units(steerer, unit_frame)
    n_units = sum(map(_width(steerer), steerer.sites))
    ks = [int(k) for k in ks]
    bad = [k for k in ks if not 1 <= k <= min(len(top), n_units)]
    if not ks or bad:
        raise ValueError(f"ks must be non-empty, each in 1..{min(len(top), n_units)} (rows of "
                         f"unit_frame, units of the steerer); got {bad or ks}")
    if n_random < 1:
        raise ValueError(f"n_random must be at least 1, got {n_random}")
    effects = _Effects(model, _token_ids(model, texts, max_tokens, "texts"), strength,
                       batch_size)
    effect_all = effects(steerer)
    jobs = [(k, "top", 0, top[:k]) for k in ks]
    for d in range(n_random):
        order = _random_order(steerer, seed + d)
        jobs += [(k, "random", d, order[:k]) for k in ks]
    rows = [{"k": k, "selection": sel, "draw": d,
             "effect_remaining": effects(_ablated(steerer, units)), "effect_all": effect_all}
            for k, sel, d, units in tqdm(jobs, desc="validate units", disable=not progress)]
    return pd.DataFrame(rows, columns=VALIDATION_COLUMNS)
