"""Evaluation: generate → score toxicity → perplexity → sweep λ → tidy DataFrames.

>>> from steerinterp.evaluate import evaluate, sweep, calibrate, pareto_front
>>> ev = evaluate(model, steerer, prompts=prompts, ppl_texts=wiki)
>>> ev.summary()["mean_score"], ev.summary()["ppl"]
"""

from .generation import PRESETS, GenerationSettings, generate, settings_for
from .harness import EvalSettings, Evaluation, compare, evaluate
from .perplexity import delta_perplexity, perplexity, summarize_perplexity
from .scorers import load_scorer
from .stats import paired_differences, summarize_generations
from .sweep import Calibration, calibrate, pareto_front, sweep
from .utility import delta_utility, utility, utility_summary

__all__ = ["PRESETS", "Calibration", "EvalSettings", "Evaluation", "GenerationSettings",
           "calibrate", "compare", "delta_perplexity", "delta_utility", "evaluate", "generate",
           "load_scorer", "paired_differences", "pareto_front", "perplexity", "settings_for",
           "summarize_generations", "summarize_perplexity", "sweep", "utility", "utility_summary"]
