"""The model's forward tail, written once for every reader of log-probabilities (perplexity,
zero-shot utility, attribution, generation): blocks (steering hooks fire there) → final norm →
unembedding, chunked, in float32, soft-capped as ``HookedTransformer.forward`` does.

Full logits are never materialised: Gemma-3's 262k vocabulary makes them 1 GB in fp32 for a
16×64 batch, so the final residual is unembedded ``LOGITS_PER_CHUNK`` elements at a time and only
each target's log-probability is kept.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch.utils.checkpoint import checkpoint
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from ..tokens import pad_left

# Elements of one [positions, d_vocab] logits chunk: 2^25 floats = 128 MB in fp32, i.e. 128
# positions of Gemma-3 at a time. Module-level so tests can force several chunks.
LOGITS_PER_CHUNK = 2**25


def final_residual(model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"],
                   mask: Int[torch.Tensor, "batch pos"],
                   cache: TransformerLensKeyValueCache | None = None, last_only: bool = False
                   ) -> Float[torch.Tensor, "batch out_pos d_model"]:
    """Every block (hooks fire on every position; ``cache`` grows), then the final norm: on
    the whole grid, or on the last position only with ``last_only`` (decoding)."""
    resid = model(tokens, attention_mask=mask, past_kv_cache=cache,
                  stop_at_layer=model.cfg.n_layers)
    if last_only:
        resid = resid[:, -1:]
    return model.ln_final(resid) if model.cfg.normalization_type is not None else resid


def target_logprobs(model: HookedTransformer, resid: Float[torch.Tensor, "n d_model"],
                    targets: Int[torch.Tensor, "n"]) -> Float[torch.Tensor, "n"]:
    """log p(target) from the normalised final residual, a chunk of logits at a time, in float32
    (TL's own loss would take the log-softmax in the model's dtype)."""
    step = max(1, LOGITS_PER_CHUNK // model.cfg.d_vocab_out)
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    out = []
    for start in range(0, resid.shape[0], step):
        logits = model.unembed(resid[None, start:start + step])[0].float()
        if cap > 0:  # Gemma-2-style final soft-capping, as in HookedTransformer.forward
            logits = cap * torch.tanh(logits / cap)
        # gather − logsumexp avoids a second vocabulary-sized tensor for log_softmax
        target = logits.gather(-1, targets[start:start + step, None])[:, 0]
        out.append(target - torch.logsumexp(logits, dim=-1))
    return torch.cat(out) if out else resid.new_zeros(0, dtype=torch.float32)


def _scored(model: HookedTransformer, ids: list[list[int]], checkpointed: bool
            ) -> tuple[Float[torch.Tensor, "n"], Int[torch.Tensor, "n"], torch.Tensor]:
    """log p of every scored position of one left-padded batch, each one's row, and the
    batch's real-token mask."""
    batch = pad_left(model, ids, skip_first=False)
    resid = final_residual(model, batch.tokens, batch.attention_mask)
    real = batch.attention_mask.bool()
    # Position t predicts token t+1; with left padding both are real iff t is real.
    scored = real[:, :-1] & real[:, 1:]
    r, t = resid[:, :-1][scored], batch.tokens[:, 1:][scored]
    if checkpointed:
        step = max(1, LOGITS_PER_CHUNK // model.cfg.d_vocab_out)
        logp = torch.cat([checkpoint(target_logprobs, model, r[i:i + step], t[i:i + step],
                                     use_reentrant=False) for i in range(0, len(r), step)]
                         or [r.new_zeros(0)])
    else:
        logp = target_logprobs(model, r, t)
    return logp, scored.nonzero()[:, 0], real


def scored_logp(model: HookedTransformer, ids: list[list[int]], checkpointed: bool = False
                ) -> tuple[Float[torch.Tensor, "batch"], torch.Tensor]:
    """Summed next-token log p per text of one left-padded batch, and the batch's real-token
    mask. ``checkpointed``: differentiable, with each logit chunk recomputed in the backward
    pass, so a backward never keeps the vocabulary-sized logits alive."""
    logp, rows, real = _scored(model, ids, checkpointed)
    out = torch.zeros(len(ids), dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)
    return out, real


@torch.inference_mode()
def batch_nll(model: HookedTransformer, ids: list[list[int]]) -> Float[torch.Tensor, "batch"]:
    """Summed next-token NLL per text of one left-padded batch, float64 on the CPU: summed in
    float64 (exact enough for any length; MPS has no float64)."""
    logp, rows, _ = _scored(model, ids, checkpointed=False)
    out = torch.zeros(len(ids), dtype=torch.float64)
    return out.index_add_(0, rows.cpu(), -logp.cpu().double())
