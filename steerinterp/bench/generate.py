"""Generation benchmark: TransformerLens ``generate`` vs :func:`~steerinterp.evaluate.generation.
decode` (greedy, KV cache) on the same left-padded batches; and, steered, HuggingFace
transformers' ``generate`` with a forward pre-hook that adds a vector to one decoder layer's
input (what steering-vectors and repeng users run) vs our loop with the same vector as an ActAdd
steerer at that layer's ``resid_pre``, on the same weights.

As in :mod:`steerinterp.bench`, the number to read is the ratio measured in the same run: the two
loops are interleaved (order alternating each round) and medians kept. CPU seconds are reported
too: CPU / wall well under the thread count means other work shared the machine.
"""

from __future__ import annotations

import functools
import statistics
import time
from contextlib import contextmanager

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from ..assets import ASSETS, hf_cache_path
from .common import machine, sync
from ..data import load_texts
from ..evaluate.generation import GenerationSettings, decode, unembed_weight
from ..steer import make, steered
from ..tokens import pad_left, token_ids

STEER_PAIR = (["You are a disgusting idiot"], ["You are a wonderful friend"])


@contextmanager
def _left_padding(model: HookedTransformer):
    # TL's generate infers the attention mask of a token batch from the tokenizer's side
    side = model.tokenizer.padding_side
    model.tokenizer.padding_side = "left"
    try:
        yield
    finally:
        model.tokenizer.padding_side = side


@contextmanager
def _tl_layout(model: HookedTransformer):
    """``W_U`` in TL's own layout (contiguous [d_model, d_vocab], as TL builds it), so TL's
    ``Unembed`` copies ``W_U.T`` on every forward: what ASSETS.md's 17-21 tok/s measured.
    The original parameter is put back on exit."""
    before = model.unembed.W_U
    model.unembed.W_U = torch.nn.Parameter(before.detach().contiguous(),
                                           requires_grad=before.requires_grad)
    try:
        yield
    finally:
        model.unembed.W_U = before


@torch.inference_mode()
def _tl(model: HookedTransformer, batches, new_tokens: int) -> list[torch.Tensor]:
    with _left_padding(model):
        return [model.generate(b.tokens, max_new_tokens=new_tokens, do_sample=False,
                               use_past_kv_cache=True, stop_at_eos=False,
                               verbose=False)[:, b.tokens.shape[1]:] for b in batches]


def _tl_default_layout(model: HookedTransformer, batches, new_tokens: int) -> list[torch.Tensor]:
    with _tl_layout(model):
        return _tl(model, batches, new_tokens)


def _ours(model: HookedTransformer, batches, settings: GenerationSettings) -> list[torch.Tensor]:
    w_t = unembed_weight(model)  # what generate() does: once per call
    return [decode(model, b.tokens, b.attention_mask, settings, unembed=w_t)[0]
            for b in batches]


def _hf_model(model: HookedTransformer):
    """The same weights as a transformers model (fp32, eval), or ``None`` where there is no
    HF copy on this machine (the random tiny models)."""
    from transformers import AutoModelForCausalLM

    name = model.cfg.model_name
    path = hf_cache_path(name) if name in ASSETS else None
    if path is None or not path.exists():
        return None
    return AutoModelForCausalLM.from_pretrained(path, dtype=model.cfg.dtype).to(
        model.cfg.device).eval()


@torch.inference_mode()
def _hf_steered(hf, batches, new_tokens: int, layer: int, vector: torch.Tensor):
    """HF ``generate`` with ``vector`` added to decoder layer ``layer``'s input on every
    position (prompt and each new token), removed afterwards."""
    def add(module, args):
        return (args[0] + vector.to(args[0].dtype),) + tuple(args[1:])

    handle = hf.model.layers[layer].register_forward_pre_hook(add)
    try:
        return [hf.generate(input_ids=b.tokens, attention_mask=b.attention_mask,
                            max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False, pad_token_id=hf.config.pad_token_id or 0,
                            )[:, b.tokens.shape[1]:] for b in batches]
    finally:
        handle.remove()


def _ours_steered(model, batches, settings, actadd):
    with steered(model, actadd, strength=1.0):
        return _ours(model, batches, settings)


def _steered_runs(model: HookedTransformer, batches, new_tokens: int, settings) -> dict:
    """``hf_steered`` and ``ours_steered`` with one ActAdd vector, where an HF copy exists."""
    hf = _hf_model(model)
    if hf is None:
        return {}
    actadd = make("actadd").fit(model, *STEER_PAIR)  # one middle resid_pre: HF's layer input
    site = actadd.sites[0]
    vector = actadd.tensor(site, "bias").detach()
    hf_run = functools.partial(_hf_steered, hf, batches, new_tokens, site.layer, vector)
    hf_run.site = str(site)  # reported with the result
    return {"hf_steered": hf_run,
            "ours_steered": lambda: _ours_steered(model, batches, settings, actadd)}


@torch.inference_mode()
def weight_pass_s(hf, batch: int, repeats: int = 5) -> float:
    """Median seconds to multiply a ``batch``-row input by every ``nn.Linear`` weight of ``hf``
    once (the unembedding included, a tied one once): the least a decode step of that batch
    must do at this precision, since each step reads every weight. Attention over the cache,
    norms and sampling come on top, so no loop on these weights beats ``batch`` tokens per
    this many seconds."""
    weights = {id(m.weight): m.weight for m in hf.modules() if isinstance(m, torch.nn.Linear)}
    inputs = [(torch.randn(batch, w.shape[1], dtype=w.dtype, device=w.device), w)
              for w in weights.values()]
    times = []
    for _ in range(repeats + 1):  # the first round warms the allocator, and is dropped
        sync(str(inputs[0][1].device))
        t0 = time.perf_counter()
        for x, w in inputs:
            torch.nn.functional.linear(x, w)
        sync(str(inputs[0][1].device))
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def bench_generate(model: HookedTransformer, n_prompts: int = 8, new_tokens: int = 32,
                   repeats: int = 3, batch_size: int = 16, seed: int = 0,
                   tl_layout: bool = True, hf: bool = True) -> dict:
    """Greedy throughput of TL ``generate`` and our loop on ``n_prompts`` built-in toxic prompts.

    Conditions: ``tl`` runs TL's ``generate`` on ``model`` as given (``load_model`` stores ``W_U``
    transposed, which already removes TL's per-step copy); ``tl_layout`` (optional) runs it with
    ``W_U`` in TL's default layout, i.e. what TL users get; ``ours`` is :func:`decode`.

    Prompts are batched longest first (``batch_size`` per batch, left-padded), each generates
    exactly ``new_tokens`` (no EOS stop). One untimed warm-up of each loop, then ``repeats``
    timed rounds. ``tok_per_s`` = new tokens / median wall seconds (prefill included);
    ``ratio`` = TL seconds / ours (``ratio_vs_tl_layout`` likewise). ``identical`` says
    whether every greedy token agreed (``n_differ`` counts those that did not): reported, never
    raised. With ``hf`` and an HF copy of the weights: ``hf_steered`` / ``ours_steered`` (module
    docstring), ``ratio_vs_hf`` = HF seconds / ours, ``hf_n_differ`` between the two, and
    ``weight_floor_tok_per_s``: one batch over :func:`weight_pass_s`, the throughput no decode
    loop on these weights at this precision reaches on this machine.
    """
    device = str(model.cfg.device)
    prompts = load_texts("toxic_prompts", n=n_prompts, seed=seed)
    ids = sorted(token_ids(model, prompts, 64), key=len, reverse=True)
    batches = [pad_left(model, ids[i:i + batch_size], skip_first=False)
               for i in range(0, len(ids), batch_size)]
    settings = GenerationSettings(max_new_tokens=new_tokens, temperature=0.0, samples=1,
                                  batch_size=batch_size)
    runs = {"tl": lambda: _tl(model, batches, new_tokens),
            "ours": lambda: _ours(model, batches, settings)}
    if tl_layout:
        runs["tl_layout"] = lambda: _tl_default_layout(model, batches, new_tokens)
    if hf:
        runs.update(_steered_runs(model, batches, new_tokens, settings))
    outputs = {k: fn() for k, fn in runs.items()}  # warm-up, and the tokens to compare
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(repeats):
        names = list(runs)
        for k in names[rep % len(names):] + names[:rep % len(names)]:  # rotate the order
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            runs[k]()
            sync(device)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    n_new = len(ids) * new_tokens
    n_differ = sum(int((a != b).sum()) for k in ("tl", "tl_layout") if k in runs
                   for a, b in zip(outputs[k], outputs["ours"]))
    med = {k: statistics.median(v) for k, v in wall.items()}
    steer = {}
    if "hf_steered" in runs:
        floor_s = weight_pass_s(runs["hf_steered"].args[0], min(batch_size, len(ids)))
        steer = {"weight_floor_tok_per_s": min(batch_size, len(ids)) / floor_s,
                 "ratio_vs_hf": med["hf_steered"] / med["ours_steered"],
                 "hf_n_differ": sum(int((a != b).sum()) for a, b in
                                    zip(outputs["hf_steered"], outputs["ours_steered"])),
                 "steer_site": runs["hf_steered"].site}
    return {
        "model": model.cfg.model_name, "device": device, "machine": machine(device),
        "n_prompts": len(ids), "batch_size": batch_size,
        "prompt_tokens": [b.tokens.shape[1] for b in batches], "new_tokens": new_tokens,
        "repeats": repeats,
        **{f"{k}_s": med[k] for k in runs},
        **{f"{k}_tok_per_s": n_new / med[k] for k in runs},
        **{f"{k}_cpu_s": statistics.median(cpu[k]) for k in runs},
        "ratio": med["tl"] / med["ours"],
        "ratio_vs_tl_layout": med["tl_layout"] / med["ours"] if tl_layout else float("nan"),
        "identical": n_differ == 0, "n_differ": n_differ, "n_new_tokens": n_new, **steer,
        "wall_runs": wall, "cpu_runs": cpu,
    }


def generate_table(result: dict) -> pd.DataFrame:
    """The :func:`bench_generate` result as one row per loop."""
    names = {"tl_layout": "TL generate, TL's W_U layout", "tl": "TL generate, model as given",
             "ours": "steerinterp decode",
             "hf_steered": "HF generate + steering pre-hook (steered)",
             "ours_steered": "steerinterp decode + ActAdd (steered)"}
    return pd.DataFrame([{
        "loop": label, "tok_per_s": result[f"{k}_tok_per_s"], "median_s": result[f"{k}_s"],
        "cpu_s": result[f"{k}_cpu_s"], "cpu_per_wall": result[f"{k}_cpu_s"] / result[f"{k}_s"],
        # each loop against ours under the same steering (none, or the same ActAdd vector)
        "ours_speedup": result[f"{k}_s"] / result["ours_steered_s" if k.endswith("_steered")
                                                  else "ours_s"],
        "identical_tokens": result["identical"],
    } for k, label in names.items() if f"{k}_s" in result])
