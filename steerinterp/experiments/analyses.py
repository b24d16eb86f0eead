"""The analyses ``steerinterp figures`` draws: each a ``compute`` (model → frames) and a
``draw`` (frames → figures) registered in :data:`steerinterp.experiments.registry.ANALYSES`."""

from __future__ import annotations

import pandas as pd

from .registry import Context, analysis
from ..sites import parse_sites

FIT_SET = ("n_texts", "fit_set")  # the size fields every analysis's fit sets read (ctx.texts)


def _auroc(ctx: Context) -> dict[str, pd.DataFrame]:
    from ..analysis import expert_overlap, expert_sets, expert_tokens, neuron_auroc, top_experts

    toxic, wiki = ctx.texts()
    scores = neuron_auroc(ctx.model, toxic, wiki, progress=False)
    tokens = expert_tokens(ctx.model, top_experts(scores, k=12), toxic)
    sets = expert_sets(ctx.model, n_texts=ctx.z.n_texts, progress=False)
    return {"auroc_scores": scores, "expert_tokens": tokens,
            "expert_overlap": expert_overlap(sets)}


def _draw_auroc(frames):
    from ..plots import (auroc_quantiles, plot_auroc_distribution, plot_auroc_map,
                        plot_expert_overlap, plot_expert_tokens)

    scores = frames["auroc_scores"]
    slim = scores[["site", "layer", "point", "unit", "auroc"]]  # what the map reads
    slim.attrs = dict(scores.attrs)
    quantiles = auroc_quantiles(scores)  # the distribution is drawn from these alone
    return {"auroc_map": (plot_auroc_map(slim), slim),
            "auroc_distribution": (plot_auroc_distribution(quantiles), quantiles),
            "expert_tokens": (plot_expert_tokens(frames["expert_tokens"]),
                              frames["expert_tokens"]),
            "expert_overlap": (plot_expert_overlap(frames["expert_overlap"]),
                               frames["expert_overlap"])}


analysis("auroc", reads=FIT_SET)((_auroc, _draw_auroc))


def calibration_evaluator(ctx: Context):
    """``at(steerer) -> dict``: mean toxicity (± SE, and unsteered) and PPL change at λ = 1 on
    the calibration split (prompts and texts the main job never evaluates on), at the size's
    front settings; the unsteered evaluation runs once, and only if asked for."""
    from ..evaluate import EvalSettings, GenerationSettings, compare, evaluate
    from .fitset_choice import calibration_ppl_texts
    from .job import eval_prompts, max_prompt_tokens
    from .fitsets import calibration_prompts

    fz, model = ctx.z.fronts, ctx.model
    kw = dict(prompts=eval_prompts(model, fz.n_prompts, ctx.seed,
                                   max_prompt_tokens(model, fz.new_tokens), "calibration",
                                   pool=calibration_prompts()),
              ppl_texts=calibration_ppl_texts(fz.n_ppl), progress=False,
              settings=EvalSettings(generation=GenerationSettings(
                  max_new_tokens=fz.new_tokens, samples=fz.samples, seed=ctx.seed)))
    base = []

    def at(steerer) -> dict:
        base[:] = base or [evaluate(model, condition="unsteered", **kw)]
        row = compare([base[0], evaluate(model, steerer, condition="steered", **kw)]).iloc[1]
        return {"mean_score": row["mean_score"], "mean_score_se": row["mean_score_se"],
                "mean_score_unsteered": base[0].summary()["mean_score"],
                "ratio_mean_score": row["ratio_mean_score"], "ppl": row["ppl"],
                "delta_ppl_rel": row["delta_ppl_rel"]}
    return at


EXAMPLES = ["You are a disgusting idiot and everyone hates you.",
            "The river flows north through the valley before reaching the sea."]


def _token_scales(ctx: Context) -> dict[str, pd.DataFrame]:
    from ..analysis import mean_scale_by_site, token_scales
    from ..steer import make

    toxic, wiki = ctx.texts()
    base = ctx.steerer("linear_act")
    dsas = make("dsas", base=base).fit(ctx.model, toxic,
                                       control=load_control(ctx))
    groups = {"toxic (held out)": ctx.held_out("toxic", ctx.z.n_texts // 2),
              "Wikipedia (held out)": ctx.held_out("wiki_ppl", ctx.z.n_texts // 2)}
    return {"token_scales": token_scales(ctx.model, dsas, EXAMPLES),
            "scale_by_site": mean_scale_by_site(ctx.model, dsas, groups)}


def load_control(ctx: Context) -> list[str]:
    from ..data import load_texts

    return load_texts("wiki_control", n=ctx.z.n_texts, seed=ctx.seed)


def _draw_token_scales(frames):
    from ..plots import plot_scale_by_site, plot_token_heatmap

    tok, by_site = frames["token_scales"], frames["scale_by_site"]
    return {"dsas_token_scales": (plot_token_heatmap(tok, [0, 1]), tok),
            "dsas_scale_by_site": (plot_scale_by_site(by_site), by_site)}


# Revision 1: read out on held-out prompts that are in no fit set (``Context.held_out``).
analysis("token_scales", reads=FIT_SET, revision=1)((_token_scales, _draw_token_scales))


def _sae(ctx: Context) -> dict[str, pd.DataFrame]:
    from ..analysis import sae_overlap, train_sae

    toxic, wiki = ctx.texts()
    steerers = {"linear_act": ctx.steerer("linear_act"), "mean_shift": ctx.steerer("mean_shift")}
    shared = [s for s in steerers["linear_act"].sites if s in steerers["mean_shift"].sites]
    site = shared[len(shared) // 2]  # a middle layer both methods steer
    sae = train_sae(ctx.model, site, size=ctx.z.sae, seed=ctx.seed, progress=False)
    result = sae_overlap(ctx.model, steerers, sae, toxic, wiki, site=site)
    return {"sae_alignment": result.alignment, "sae_changes": result.changes,
            "sae_overlap": result.overlap, "sae_top_tokens": result.top_tokens}


def _draw_sae(frames):
    from ..analysis.sae_overlap import feature_labels
    from ..plots import plot_feature_changes, plot_feature_overlap, plot_shift_alignment

    labels = feature_labels(frames["sae_top_tokens"]) if len(frames["sae_top_tokens"]) else None
    return {"sae_shift_alignment": (plot_shift_alignment(frames["sae_alignment"], labels=labels),
                                    frames["sae_alignment"]),
            "sae_feature_changes": (plot_feature_changes(frames["sae_changes"], labels=labels),
                                    frames["sae_changes"]),
            "sae_feature_overlap": (plot_feature_overlap(frames["sae_overlap"]),
                                    frames["sae_overlap"])}


analysis("sae", reads=(*FIT_SET, "sae"))((_sae, _draw_sae))


def _attribution(ctx: Context) -> dict[str, pd.DataFrame]:
    """Mean shift at the λ calibrated to +5% PPL on calibration text: the analysis explains
    the steering one would deploy (at λ = 1 the map costs gemma-3-270m +17% PPL)."""
    from ..analysis import attribute, validate_units
    from .fitset_choice import calibration_ppl_texts
    from ..evaluate.sweep import calibrate

    steerer = ctx.steerer("mean_shift")
    texts = ctx.held_out("toxic", ctx.z.n_attr)
    neutral = ctx.held_out("wiki_ppl", ctx.z.n_attr)
    lam = calibrate(ctx.model, steerer, calibration_ppl_texts(2 * ctx.z.n_attr),
                    ppl_budget=ATTRIBUTION_BUDGET).strength
    sites = attribute(ctx.model, steerer, texts, level="site", strength=lam,
                      neutral_texts=neutral, progress=False)
    units = attribute(ctx.model, steerer, texts, level="unit", strength=lam,
                      neutral_texts=neutral, top_k=ctx.z.top_k_units, progress=False)
    ks = sorted({1, 10, ctx.z.top_k_units // 2, ctx.z.top_k_units})
    check = validate_units(ctx.model, steerer, units, texts, ks=ks, strength=lam,
                           progress=False)
    return {name: frame.assign(method="mean_shift", strength=lam) for name, frame in
            (("attribution_sites", sites), ("attribution_units", units),
             ("attribution_validation", check))}


ATTRIBUTION_BUDGET = 0.05  # the PPL budget of the main job's calibrated rows


def _draw_attribution(frames):
    from ..plots import plot_site_attribution, plot_unit_attribution, plot_unit_validation

    return {"attribution_sites": (plot_site_attribution(frames["attribution_sites"]),
                                  frames["attribution_sites"]),
            "attribution_units": (plot_unit_attribution(frames["attribution_units"]),
                                  frames["attribution_units"]),
            "attribution_validation": (plot_unit_validation(frames["attribution_validation"]),
                                       frames["attribution_validation"])}


analysis("attribution", reads=(*FIT_SET, "n_attr", "top_k_units"), revision=1)(
    (_attribution, _draw_attribution))


# The perplexity cost of the fitted maps at full strength (λ = 1 multiplies gemma-3-270m's PPL):
# which sites it comes from, per method, to choose default sites.
DIAGNOSIS_METHODS = ("mean_shift", "linear_act")


def _diagnosis(ctx: Context) -> dict[str, pd.DataFrame]:
    from ..analysis import diagnose
    from .fitset_choice import calibration_ppl_texts

    # PPL on the calibration end of wiki_ppl (choosing sites is calibration, not evaluation);
    # W2 on the next texts of the fit sets' own shuffle (same kind, disjoint from the fit).
    ppl = calibration_ppl_texts(2 * ctx.z.n_attr)
    source, target = ctx.texts(held_out=True)
    return {f"diagnosis_{m}": diagnose(ctx.model, ctx.steerer(m), ppl, source, target,
                                       strength=1.0, progress=False)
            for m in DIAGNOSIS_METHODS}


def _draw_diagnosis(frames):
    from ..plots import plot_diagnosis

    return {name: (plot_diagnosis(frame), frame) for name, frame in frames.items()}


# revision 1: held-out texts share no prompt with the fit texts (fitsets.toxicity_fit_sets)
analysis("diagnosis", reads=(*FIT_SET, "n_attr"), revision=1)((_diagnosis, _draw_diagnosis))


__all__ = ["EXAMPLES", "parse_sites"]
