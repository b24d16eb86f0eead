"""Notebook 04's evaluation cell at its defaults (64 held-out prompts, the main job's
sampling, 32 PPL texts), run on the γ-path fits that ``steerinterp figures --only sparsity``
caches, to check what the cell reads and how long it takes without refitting.

    steerinterp figures --model gemma-3-270m --only sparsity   # fits the path once (cached)
    python scripts/nb04_evaluation.py [--cache results/figures/gemma-3-270m-default]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from steerinterp import load_model, load_texts
from steerinterp.evaluate import EvalSettings, evaluate, settings_for
from steerinterp.steer import load_steerer

# notebook 04's parameter cell
MAX_PROMPT_TOKENS, MAX_NEW_TOKENS, N_PROMPTS, N_PPL, SEED = 32, 20, 64, 32, 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--cache", type=Path, default=None,
                        help="the figures cache (default results/figures/<model>-default)")
    args = parser.parse_args()
    root = (args.cache or Path(f"results/figures/{args.model}-default")) / "lineas_path"
    fits = sorted(root.glob("lineas_gamma=*"))
    if not fits:
        print(f"error: no γ-path fits under {root}: run `steerinterp figures --model "
              f"{args.model} --only sparsity` first", file=sys.stderr)
        return 2
    model = load_model(args.model)
    path = {float(p.name.split("=")[1].split("_")[0]): load_steerer(p) for p in fits}
    start = time.perf_counter()
    prompts = [p for p in load_texts("toxic_prompts")
               if model.to_tokens(p).shape[1] <= MAX_PROMPT_TOKENS][:N_PROMPTS]
    settings = EvalSettings(generation=settings_for(
        "default", max_new_tokens=MAX_NEW_TOKENS, max_prompt_tokens=MAX_PROMPT_TOKENS,
        seed=SEED))
    ppl_texts = load_texts("wiki_ppl")[:N_PPL]
    base = evaluate(model, prompts=prompts, ppl_texts=ppl_texts, settings=settings).summary()
    rows = [{"gamma": g, **evaluate(model, s, prompts=prompts, ppl_texts=ppl_texts,
                                    settings=settings).summary()}
            for g, s in sorted(path.items())]
    print(f"unsteered: mean score {base['mean_score']:.3f} ± {base['mean_score_se']:.3f}, "
          f"ppl {base['ppl']:.2f}")
    cols = ["gamma", "mean_score", "mean_score_se", "toxic_share", "ppl"]
    print(pd.DataFrame(rows)[cols].round(3).to_string(index=False))
    print(f"evaluation: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
