"""Fold static per-unit affine steering into a copy of the model's weights (METHODS.md §4.4).

At a fixed strength λ an :class:`AffineSteerer` maps each unit as ``z ↦ s·z + t`` with
``s = 1 + λ(ω − 1)`` and ``t = λ·b``. When a linear map (or a norm gain) owns the hooked value,
that map can absorb ``(s, t)`` exactly, so a deployed model needs no hooks at all. Where the fold
lands, per point (checked against the TransformerLens 3.9 component sources):

==================  =========================================================================
``mlp_pre``         columns of ``W_in``/``b_in``; gated MLPs: ``W_gate`` (TL has no gate bias)
``mlp_pre_linear``  columns of ``W_in`` (no bias: TL adds ``b_in`` *after* the gating product)
``mlp_post``        the following ``W_out`` rows; the shift goes into ``b_out``
``mlp_out``         columns of ``W_out``/``b_out``; post-norm models: the gain of the last norm
``attn_z``          the following ``W_O`` rows; the shift goes into ``b_O``
``attn_out``        ``W_O``/``b_O`` along d_model; post-norm models: the gain of the last norm
``ln1``/``ln2``     the norm's gain (and bias): ``hook_normalized`` is ``x̂`` *before* ``w, b``
``resid_*``         never: no linear map owns the residual stream
==================  =========================================================================

A shift cannot be folded where nothing adds a bias after the hook (RMSNorm gains, gated
projections), and a transport support makes the map piecewise; both raise :class:`SteerError`
naming the site.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from transformer_lens import HookedTransformer
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from ..sites import Site
from .affine import AffineSteerer
from .base import SteerError

__all__ = ["fold_into_weights"]

Map = tuple[torch.Tensor, torch.Tensor]  # (scale s, shift t), float64, one value per unit
_KEEP_HOOK = "keep this site as a hook with steered()"


def fold_into_weights(model: HookedTransformer, *steerers: AffineSteerer,
                      strength: float | None = None) -> HookedTransformer:
    """A deep copy of ``model`` whose weights implement ``steerers`` exactly, with no hooks.

    Equivalent to running ``model`` inside ``steered(model, *steerers, strength=strength)``:
    steerers compose in argument order and ``strength`` overrides every steerer's λ. Only
    :class:`AffineSteerer` maps without a transport support fold; anything else raises
    :class:`SteerError` naming the reason and site. ``model`` itself is left untouched.

    The copy keeps ``model.steerinterp_info`` (so stores and steerers still match it) and
    records what was folded in ``steerinterp_folded``. Its logits are already steered: do not
    steer it again with the same steerer, which would apply the map twice.
    """
    maps, record = _compose(model, steerers, strength)  # all checks before the costly copy
    if getattr(model.cfg, "load_in_4bit", False):
        raise SteerError("cannot fold steering into a 4-bit quantized model's weights")
    if any(hp.has_hooks("fwd") for hp in model.hook_dict.values()):
        # deepcopy would carry the hooks into the copy, which would then be steered twice.
        raise SteerError("model has forward hooks attached (inside steered() or model.hooks()?); "
                         "fold outside the hook context")
    folded = copy.deepcopy(model)
    with torch.no_grad():
        for site, (scale, shift) in maps.items():
            _FOLDS[site.point](folded, site, scale, shift)
    folded.steerinterp_folded = [*getattr(model, "steerinterp_folded", []), *record]
    return folded


def _compose(model: HookedTransformer, steerers: tuple,
             strength: float | None) -> tuple[dict[Site, Map], list[dict]]:
    """Per site, the composition of every steerer's ``(s, t)`` in argument order, and a
    provenance record per steerer.

    Composing first and folding once matters: a map folded into the *following* layer
    (``mlp_post``, ``attn_z``) acts on the raw hook value, so folding steerers one after the
    other would apply them in reverse order there.
    """
    maps: dict[Site, Map] = {}
    record = []
    for steerer in steerers:
        if not isinstance(steerer, AffineSteerer):
            raise SteerError(f"only per-unit affine steerers (AffineSteerer) fold into weights; "
                             f"got {type(steerer).__name__}: keep it as a hook with steered()")
        steerer.check_model(model)
        lam = steerer.check_strength(steerer.config.strength if strength is None else strength)
        record.append({"method": steerer.method, "sites": [str(x) for x in steerer.sites],
                       "strength": lam})
        for site in steerer.sites:
            if site.point.startswith("resid_"):
                _fold_resid(model, site, None, None)
            if steerer.transport_support(site) is not None:
                raise SteerError(f"{site}: {steerer.method} has a transport support (lo < z < hi), "
                                 f"so its map is piecewise and cannot be folded; {_KEEP_HOOK}")
            scale, shift = _unit_map(steerer, site, lam, site.width(model))
            _check_affine(steerer, site, lam, scale, shift)
            if site in maps:  # z -> s2(s1 z + t1) + t2
                s1, t1 = maps[site]
                scale, shift = scale * s1, scale * t1 + shift
            maps[site] = (scale, shift)
    return maps, record


def _unit_map(steerer: AffineSteerer, site: Site, lam: float, width: int) -> Map:
    """``(1 + λ(ω − 1), λ·b)`` in float64 on CPU; a missing ω or b is the identity part."""
    omega, bias = steerer.affine(site)
    scale = torch.ones(width, dtype=torch.float64)
    shift = torch.zeros(width, dtype=torch.float64)
    if omega is not None:
        scale = 1 + lam * (omega.detach().double().cpu() - 1)
    if bias is not None:
        shift = lam * bias.detach().double().cpu()
    return scale, shift


def _check_affine(steerer: AffineSteerer, site: Site, lam: float, scale: torch.Tensor,
                  shift: torch.Tensor) -> None:
    """Guard against a subclass whose ``steer()`` is not the map ``affine()`` describes: the
    fold must equal what ``steered()`` would do, or it would be silently wrong."""
    device = next((t.device for t in steerer.tensors.values()), torch.device("cpu"))
    probe = 4 * torch.randn(3, scale.numel(), generator=torch.Generator().manual_seed(0))
    got = steerer.steer(probe.to(device), site, lam).detach().double().cpu()
    want = scale * probe.double() + shift
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise SteerError(f"{site}: {steerer.method}.steer() is not the per-unit affine map its "
                         f"affine() reports, so it cannot be folded; {_KEEP_HOOK}")


# -- weight edits (all in float64, then rounded once to the parameter's dtype) ----------------
def _set(param: nn.Parameter, value: torch.Tensor) -> None:
    param.copy_(value.to(device=param.device, dtype=param.dtype))


def _d(param: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``like`` moved to ``param``'s device in float64 (steerer tensors may live elsewhere)."""
    return like.to(device=param.device, dtype=torch.float64)


def _no_shift(site: Site, shift: torch.Tensor, why: str) -> None:
    if bool((shift != 0).any()):
        raise SteerError(f"{site}: a nonzero shift cannot be folded into weights ({why}); "
                         f"use a scale-only map there or {_KEEP_HOOK}")


def _scale_output(site: Site, weight: nn.Parameter, bias: nn.Parameter | None,
                  scale: torch.Tensor, shift: torch.Tensor, why: str = "") -> None:
    """The hook sees ``x @ W (+ b)`` along W's last axis: scale W's columns, shift the bias."""
    if bias is None:
        _no_shift(site, shift, why)
    else:
        _set(bias, _d(bias, scale) * bias.double() + _d(bias, shift))
    _set(weight, weight.double() * _d(weight, scale))


def _scale_input(weight: nn.Parameter, bias: nn.Parameter, scale: torch.Tensor,
                 shift: torch.Tensor) -> None:
    """The hook is the input of ``x @ W + b`` (units = W's leading axes, flattened):
    ``(s x + t) @ W + b = x @ (diag(s) W) + (b + t @ W)``. Exact whatever came before."""
    w = weight.double()
    flat = w.reshape(-1, w.shape[-1])
    _set(bias, bias.double() + _d(bias, shift) @ flat)
    _set(weight, (flat * _d(weight, scale)[:, None]).reshape(w.shape))


def _norm_gain(site: Site, norm: nn.Module, scale: torch.Tensor, shift: torch.Tensor,
               before_gain: bool) -> None:
    """Fold into a LayerNorm (``x̂ w + b``) or RMSNorm (``x̂ w``).

    ``before_gain``: the hook sees ``x̂`` (TL's ``hook_normalized``), so the output becomes
    ``(s x̂ + t) w + b`` → ``w ← s w``, ``b ← b + t w``. Otherwise the hook sees the norm's
    output, ``s (x̂ w + b) + t`` → ``w ← s w``, ``b ← s b + t``.
    """
    w, b = getattr(norm, "w", None), getattr(norm, "b", None)
    if not isinstance(w, nn.Parameter):
        raise SteerError(f"{site}: the norm ({type(norm).__name__}) has no gain to fold into "
                         f"(weights processed with fold_ln?); {_KEEP_HOOK}")
    if b is None:
        _no_shift(site, shift, f"{type(norm).__name__} has no bias")
    elif before_gain:
        _set(b, b.double() + _d(b, shift) * w.double())
    else:
        _set(b, _d(b, scale) * b.double() + _d(b, shift))
    _set(w, w.double() * _d(w, scale))


def _output_norm(model: HookedTransformer, site: Site, first: str, post: str) -> nn.Module | None:
    """The norm applied last before ``hook_attn_out``/``hook_mlp_out`` (None: a plain linear).

    Gemma-style blocks apply ``ln*_post`` before the hook; OLMo-2-style post-norm blocks then
    apply ``ln1``/``ln2`` there too (TransformerBlock.forward / apply_mlp).
    """
    block = model.blocks[site.layer]
    if model.cfg.original_architecture in POST_NORM_ARCHITECTURES:
        return getattr(block, first)
    if model.cfg.use_normalization_before_and_after:
        return getattr(block, post)
    return None


# -- one fold per point ------------------------------------------------------------------------
def _fold_mlp_pre(model, site, scale, shift):
    mlp = model.blocks[site.layer].mlp
    if getattr(mlp, "W_gate", None) is not None:  # gated: hook_pre = x @ W_gate, bias-free in TL
        _scale_output(site, mlp.W_gate, getattr(mlp, "b_gate", None), scale, shift,
                      "TL's gated MLP has no gate bias")
    else:
        _scale_output(site, mlp.W_in, mlp.b_in, scale, shift)


def _fold_mlp_pre_linear(model, site, scale, shift):
    # hook_pre_linear = x @ W_in: TL's GatedMLP adds b_in after act(gate) * pre_linear.
    mlp = model.blocks[site.layer].mlp
    _scale_output(site, mlp.W_in, None, scale, shift, "b_in is added after the gating product")


def _fold_mlp_post(model, site, scale, shift):
    mlp = model.blocks[site.layer].mlp
    _scale_input(mlp.W_out, mlp.b_out, scale, shift)


def _fold_mlp_out(model, site, scale, shift):
    norm = _output_norm(model, site, "ln2", "ln2_post")
    if norm is not None:
        return _norm_gain(site, norm, scale, shift, before_gain=False)
    mlp = model.blocks[site.layer].mlp
    _scale_output(site, mlp.W_out, mlp.b_out, scale, shift)


def _fold_attn_z(model, site, scale, shift):
    # Into the following W_O [n_heads, d_head, d_model] rather than the preceding W_V: exact
    # even where pattern rows do not sum to 1 (attention sinks, fully masked rows), and W_O is
    # per query head, so grouped-query attention's shared value heads do not get in the way.
    attn = model.blocks[site.layer].attn
    _scale_input(attn.W_O, attn.b_O, scale, shift)


def _fold_attn_out(model, site, scale, shift):
    norm = _output_norm(model, site, "ln1", "ln1_post")
    if norm is not None:
        return _norm_gain(site, norm, scale, shift, before_gain=False)
    attn = model.blocks[site.layer].attn
    _scale_output(site, attn.W_O, attn.b_O, scale, shift)


def _fold_ln(model, site, scale, shift):
    _norm_gain(site, getattr(model.blocks[site.layer], site.point), scale, shift,
               before_gain=True)


def _fold_resid(model, site, scale, shift):
    raise SteerError(f"{site}: the residual stream is not owned by any linear map, so steering "
                     f"there cannot be folded into weights; {_KEEP_HOOK}")


_FOLDS: dict[str, Callable[[HookedTransformer, Site, torch.Tensor, torch.Tensor], None]] = {
    "resid_pre": _fold_resid, "resid_mid": _fold_resid, "resid_post": _fold_resid,
    "ln1": _fold_ln, "ln2": _fold_ln, "attn_z": _fold_attn_z, "attn_out": _fold_attn_out,
    "mlp_pre": _fold_mlp_pre, "mlp_pre_linear": _fold_mlp_pre_linear,
    "mlp_post": _fold_mlp_post, "mlp_out": _fold_mlp_out,
}
