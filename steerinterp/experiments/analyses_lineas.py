"""The LinEAS analyses ``steerinterp figures`` draws (issue 12): the γ path's sparsity and its
overlap with AurA, the per-site diagnosis, the λ fronts of every method (here because they
include LinEAS and E2E-DSAS), and training to convergence. Registered like those in
:mod:`.analyses`, whose helpers they share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from .analyses import FIT_SET, _draw_diagnosis, calibration_evaluator, load_control
from .registry import Context, analysis

if TYPE_CHECKING:
    from ..steer.lineas import Lineas


def _lineas_path(ctx: Context) -> list[Lineas]:
    """One LinEAS per γ of the size (reference recipe, trained to convergence), fitted once and
    cached (sparsity and aura_lineas)."""
    from ..analysis import fit_lineas_path

    toxic, wiki = ctx.texts()
    return fit_lineas_path(ctx.model, toxic, wiki, list(ctx.z.gammas),
                           base_config={"steps": ctx.z.lineas_steps, "seed": ctx.seed,
                                        "precision": ctx.z.lineas_precision},
                           cache_dir=ctx.cache / "lineas_path", progress=False)


def _sparsity(ctx: Context) -> dict[str, pd.DataFrame]:
    """Support along the γ path, with each point's toxicity and PPL (LinEAS Fig. 4), measured
    on the calibration split."""
    from ..analysis import layer_sparsity

    path, at = _lineas_path(ctx), calibration_evaluator(ctx)
    evaluation = pd.DataFrame([{"gamma": g, **at(s)} for g, s in zip(ctx.z.gammas, path)])
    return {"layer_sparsity": layer_sparsity(path, list(ctx.z.gammas), evaluation=evaluation)}


def _draw_sparsity(frames):
    from ..plots import plot_support_path, plot_surviving_layers

    df = frames["layer_sparsity"]
    return {"lineas_support_path": (plot_support_path(df), df),
            "lineas_surviving_layers": (plot_surviving_layers(df), df)}


LINEAS_PATH = (*FIT_SET, "lineas_steps", "gammas", "lineas_precision")  # _lineas_path reads
analysis("sparsity", reads=(*LINEAS_PATH, "fronts"))(
    (_sparsity, _draw_sparsity))


def _aura_lineas(ctx: Context) -> dict[str, pd.DataFrame]:
    """AurA fitted at the sites of the sparsest LinEAS of the γ path that still steers."""
    from ..analysis import aura_lineas_overlap

    gamma, lineas = _sparsest_active(list(ctx.z.gammas), _lineas_path(ctx))
    aura = ctx.steerer("aura_lineas_sites", "aura", sites=[str(s) for s in lineas.sites])
    k = max(1, min(lineas.provenance.widths.values()) // 10)  # the sites share a width
    df = aura_lineas_overlap(aura, lineas, k=k)
    return {"aura_lineas_overlap": df.assign(gamma=gamma, k=k)}


def _sparsest_active(gammas: list[float], path: list[Lineas]) -> tuple[float, Lineas]:
    """The largest γ whose LinEAS steerer still steers at least one site (else γ = 0, or the
    first γ of the path when it has no 0)."""
    active = [(g, s) for g, s in zip(gammas, path) if (s.support()["group_norm"] > 0).any()]
    if active:
        return max(active, key=lambda gs: gs[0])
    return next(((g, s) for g, s in zip(gammas, path) if g == 0), (gammas[0], path[0]))


def _draw_aura_lineas(frames):
    from ..plots import plot_aura_lineas_overlap

    df = frames["aura_lineas_overlap"]
    return {"aura_lineas_overlap": (plot_aura_lineas_overlap(df), df)}


analysis("aura_lineas", reads=LINEAS_PATH)(
    (_aura_lineas, _draw_aura_lineas))


def _plain_lineas(ctx: Context) -> Lineas:
    """LinEAS without sparsity at the size's schedule: the γ = 0 fit of the sparsity path
    (cached there), or its own fit where the path has no γ = 0."""
    gammas = list(ctx.z.gammas)
    if 0.0 in gammas:
        return _lineas_path(ctx)[gammas.index(0.0)]
    return ctx.steerer(f"lineas-{ctx.z.lineas_steps}-{ctx.z.lineas_precision}", "lineas",
                       steps=ctx.z.lineas_steps, seed=ctx.seed, precision=ctx.z.lineas_precision)


def _diagnosis_lineas(ctx: Context) -> dict[str, pd.DataFrame]:
    """The same diagnosis for LinEAS (issue 12: where its PPL cost comes from), on
    :func:`_plain_lineas` (the reference recipe)."""
    from ..analysis import diagnose
    from .fitset_choice import calibration_ppl_texts

    lineas = _plain_lineas(ctx)
    ppl = calibration_ppl_texts(2 * ctx.z.n_attr)
    source, target = ctx.texts(held_out=True)
    return {"diagnosis_lineas": diagnose(ctx.model, lineas, ppl, source, target, strength=1.0,
                                         progress=False)}


analysis("diagnosis_lineas", reads=(*LINEAS_PATH, "n_attr"))((_diagnosis_lineas, _draw_diagnosis))


def _fronts(ctx: Context) -> dict[str, pd.DataFrame]:
    """Every front, one figure row per map family (issue 11; issue 12's "E2E-DSAS at or below
    LinEAS"): the maps of ``FRONT_METHODS`` (LinEAS: :func:`_plain_lineas`), DSAS over each of
    ``FRONT_DSAS``, and E2E-DSAS (gates and LinEAS maps trained together, same schedule), on
    the main job's evaluation split. Conditions are cached one by one, so adding a method
    computes only its points."""
    from ..data import load_texts
    from .fronts import FRONT_DSAS, FRONT_METHODS, front_steerers, fronts
    from .job import eval_prompts, max_prompt_tokens

    z, fz = ctx.z, ctx.z.fronts
    source, _ = ctx.texts()
    control = load_control(ctx)
    fitted = {m: _plain_lineas(ctx) if m == "lineas" else ctx.steerer(m) for m in FRONT_METHODS}
    steerers = front_steerers(ctx.model, fitted, source, control, dsas_bases=FRONT_DSAS)
    steerers["e2e-dsas"] = ctx.steerer(f"e2e_dsas-{z.lineas_steps}-{z.lineas_precision}",
                                       "dsas", e2e=True, control=control, steps=z.lineas_steps,
                                       seed=ctx.seed, precision=z.lineas_precision)
    prompts = eval_prompts(ctx.model, fz.n_prompts, ctx.seed,
                           max_prompt_tokens(ctx.model, fz.new_tokens), "the fronts")
    frame = fronts(ctx.model, steerers, prompts, load_texts("wiki_ppl")[:fz.n_ppl], fz,
                   seed=ctx.seed, cache_dir=ctx.cache / "fronts")
    frame.attrs["title"] = (f"{ctx.model.cfg.model_name}: λ sweeps, {fz.n_prompts} held-out "
                            f"prompts × {fz.samples}, PPL on {fz.n_ppl} texts")
    return {"fronts": frame}


def _draw_fronts(frames):
    from ..plots import plot_fronts

    frame = frames["fronts"]
    return {"fronts": (plot_fronts(frame, title=frame.attrs.get("title")), frame)}


# revision 1: E2E-DSAS rows name LinEAS as their base (they join its row in the figure)
analysis("fronts", reads=(*LINEAS_PATH, "fronts"), revision=1)((_fronts, _draw_fronts))


def _lineas_convergence(ctx: Context) -> dict[str, pd.DataFrame]:
    from ..analysis.convergence import lineas_convergence

    z, model = ctx.z, ctx.model
    fz = z.fronts
    source, target = ctx.texts()
    held = ctx.texts(held_out=True)
    # Toxicity and PPL on the calibration split (never the evaluation prompts): choosing the
    # schedule is calibration.
    at_end = calibration_evaluator(ctx)
    # "-h2": held-out texts of prompts no fit text continues (the earlier cache predates it)
    cache = (ctx.cache / "convergence" /
             f"{z.fit_set}-{z.n_texts}-{fz.n_prompts}x{fz.samples}-h2")
    parts = []
    for precision, schedules in (("fp32", z.convergence), ("bf16", z.convergence_bf16)):
        if schedules:  # bf16 (our speed-up, not the reference's) is checked against fp32 here
            got = lineas_convergence(model, source, target, *held, schedules=schedules,
                                     config={"seed": ctx.seed, "precision": precision},
                                     evaluate_at_end=at_end, log=ctx.log,
                                     cache_dir=cache if precision == "fp32" else cache / precision)
            parts.append({k: f.assign(precision=precision) for k, f in got.items()})
    frames = {k: pd.concat([p[k] for p in parts], ignore_index=True) for k in parts[0]}
    frames["lineas_checkpoints"].attrs["title"] = (
        f"{model.cfg.model_name}: LinEAS (reference recipe), {z.n_texts} + {z.n_texts} "
        f"{z.fit_set} fit texts, held-out W2 on the next {z.n_texts}")
    return frames


def _draw_lineas_convergence(frames):
    from ..plots.convergence import plot_convergence

    curve, points = frames["lineas_curve"], frames["lineas_checkpoints"]
    return {"lineas_convergence": (plot_convergence(curve, points, points.attrs.get("title")),
                                   points)}


analysis("lineas_convergence", reads=(*FIT_SET, "fronts", "convergence", "convergence_bf16"),
         revision=1)(
    (_lineas_convergence, _draw_lineas_convergence))
