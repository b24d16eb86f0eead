"""Every named experiment size in one place: the main job's (``steerinterp run --size``), the
figures' (``steerinterp figures --size``), the λ fronts' and the benchmarks' fit options.

The named *splits* (which texts fit, calibrate and evaluate) live in :mod:`.fitsets`; what each
size costs in time is measured and stated in the README.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..evaluate.utility import DEFAULT_TASKS


@dataclass(frozen=True)
class JobSize:
    """How much data each stage uses. ``default`` fits the 20-minute CPU budget; ``paper``
    uses the papers' settings as far as the built-in sets allow."""

    n_fit: int  # toxic and Wikipedia texts per fit set (length-matched), and control texts
    n_prompts: int  # held-out toxic prompts
    samples: int  # continuations per prompt
    new_tokens: int
    n_ppl: int  # held-out Wikipedia texts for perplexity
    n_calib: int  # other Wikipedia texts for calibrating λ (disjoint from the n_ppl ones)
    lineas_steps: int
    det0_experts: int
    fit_max_tokens: int = 64
    utility_n: int = 0  # questions per zero-shot task (utility.DEFAULT_TASKS); 0: not measured
    lineas_precision: str = "fp32"  # "bf16": as fp32 at a 1.4× cheaper step (FigureSize)

    def options(self, method: str) -> dict:
        """The options this size sets on ``method``'s config (its schedule, its expert count)."""
        return {"lineas": {"steps": self.lineas_steps, "precision": self.lineas_precision},
                "det0": {"num_experts": self.det0_experts}}.get(method, {})


# The shortest LinEAS schedule (reference recipe) that matches the 1000-step fit on gemma-3-270m
# (`figures --only lineas_convergence`, 64 + 64 fit texts, calibration prompts): 250 steps give
# the same toxicity (mean score 0.125 vs 0.126), lower held-out W2 (0.92 vs 0.99 of unsteered)
# and less PPL cost (+5.9% vs +9.6%); 150 (bf16) and 60 steps fall short (0.151, 0.167): the
# toxicity plateau starts at 250, so the demo cannot save time by training less.
LINEAS_CONVERGED = 250

JOB_SIZES = {
    "smoke": JobSize(n_fit=12, n_prompts=6, samples=1, new_tokens=6, n_ppl=6, n_calib=6,
                     lineas_steps=3, det0_experts=16),
    # `steerinterp demo` / `make demo`: the seed methods at LinEAS's low-data size (N = 32),
    # small enough to watch (README: measured time).
    "demo": JobSize(n_fit=32, n_prompts=40, samples=1, new_tokens=20, n_ppl=32, n_calib=16,
                    lineas_steps=LINEAS_CONVERGED, det0_experts=256, utility_n=30,
                    lineas_precision="bf16"),
    "default": JobSize(n_fit=64, n_prompts=100, samples=2, new_tokens=20, n_ppl=64,
                       n_calib=24, lineas_steps=LINEAS_CONVERGED, det0_experts=256,
                       utility_n=100),
    # LinEAS's low-data regime (N = 32, 1000 steps); AcT fits on more: 200 per side (the
    # default model's continuation pool has 221 toxic ones); all 497 held-out prompts; 2000
    # Wikipedia texts for perplexity.
    "paper": JobSize(n_fit=200, n_prompts=497, samples=2, new_tokens=32, n_ppl=2000,
                     n_calib=500, lineas_steps=1000, det0_experts=256, utility_n=300),
}


@dataclass(frozen=True)
class FrontSize:
    """What each point of the front costs: prompts × samples × tokens generated and scored,
    Wikipedia texts for PPL, questions per zero-shot task, and λ points per method."""

    n_prompts: int = 64
    samples: int = 1
    new_tokens: int = 20
    n_ppl: int = 32
    utility_n: int = 50
    points: int = 4
    utility_tasks: tuple[str, ...] = DEFAULT_TASKS


@dataclass(frozen=True)
class FigureSize:
    n_texts: int  # toxic and Wikipedia texts per set (fits and analyses)
    lineas_steps: int  # each fit of the LinEAS sparsity path (reference recipe otherwise)
    gammas: tuple[float, ...]  # LinEAS sparsity path
    sae: str  # train_sae size
    n_attr: int  # held-out toxic texts for attribution
    top_k_units: int
    fit_set: str = "continuations"  # fitsets.KINDS; tiny random models have no toxic samples
    fronts: FrontSize = FrontSize()  # the λ sweeps of ``--only fronts``
    convergence: tuple[int, ...] = (1000, 250, 60)  # LinEAS schedule lengths compared
    # The same under bf16 autocast (train.py), and one shorter schedule (the demo fits in bf16).
    convergence_bf16: tuple[int, ...] = (250, 150)
    # The γ path's fits. bf16 autocast gives the fp32 fit at 250 steps (held-out W2 ratio 0.924
    # vs 0.925, loss 105.30 vs 105.29, toxicity 0.128 vs 0.125 ± 0.027, PPL +6.0% vs +5.9%:
    # figures/lineas_convergence.csv) at ~2.0 s instead of 2.9 s per step on 2 CPU cores.
    lineas_precision: str = "bf16"


FIGURE_SIZES = {
    "quick": FigureSize(n_texts=12, lineas_steps=3, gammas=(0.0, 0.5, 5.0), sae="quick",
                        n_attr=6, top_k_units=20, fit_set="wiki",
                        fronts=FrontSize(n_prompts=3, new_tokens=3, n_ppl=3, utility_n=2,
                                         points=2, utility_tasks=("siqa",)),
                        convergence=(4, 2), convergence_bf16=(2,)),
    # The γ path is fitted to convergence with the reference recipe (Adam, lr 1e-3). Adam moves
    # every coordinate by about lr per step and the prox takes lr·γ·λ1 (L1) and lr·γ·λG·√d
    # (group) off, so with λ1 = λG = 1 every site is off from γ = 0.5 (test_lineas); the path
    # spans (0, 0.5).
    "default": FigureSize(n_texts=64, lineas_steps=LINEAS_CONVERGED,
                          gammas=(0.0, 0.1, 0.25, 0.4), sae="real", n_attr=16,
                          top_k_units=200),
}


# Benchmarks fit each method with its defaults except these (the main job's expert count).
# LinEAS gets a short schedule (bench steer times generation, not training); DSAS gates on the
# target set.
BENCH_OPTIONS: dict[str, dict] = {"det0": {"num_experts": 256}, "damp": {"num_experts": 256},
                                  "lineas": {"steps": 10}, "dsas": {"target_as_control": True}}
