"""Where steering happens: ``Site(layer, point)`` <-> TransformerLens hook names.

This is the only module that knows TransformerLens hook-name strings, so a TransformerLens
upgrade (or a move to ``TransformerBridge``) fails and gets fixed in one place.

Points (``blocks.{L}.<hook>``):

==================  ==========================  ===========  ===========================================
point               TL hook                     width        meaning
==================  ==========================  ===========  ===========================================
``resid_pre``       ``hook_resid_pre``          d_model      residual stream entering block L (HF hidden_states[L])
``resid_mid``       ``hook_resid_mid``          d_model      residual after attention
``resid_post``      ``hook_resid_post``         d_model      residual leaving block L
``attn_out``        ``hook_attn_out``           d_model      attention output (Gemma: after the post-attention norm)
``mlp_out``         ``hook_mlp_out``            d_model      MLP output (Gemma: after the post-feed-forward norm)
``mlp_pre``         ``mlp.hook_pre``            d_mlp        MLP pre-activation (GPT-2 ``c_fc``; gated: ``gate_proj``)
``mlp_pre_linear``  ``mlp.hook_pre_linear``     d_mlp        gated MLPs only: ``up_proj`` output
``mlp_post``        ``mlp.hook_post``           d_mlp        MLP hidden after the non-linearity (``down_proj`` input)
``attn_z``          ``attn.hook_z``             heads×d_head per-head attention values, heads flattened
``ln1`` / ``ln2``   ``ln{1,2}.hook_normalized`` d_model      pre-attention / pre-MLP norm output
==================  ==========================  ===========  ===========================================

TransformerLens 3.9 exposes ``hook_normalized`` of both LayerNorm and RMSNorm *before* the
norm's gain ``w`` (and bias ``b``): ``ln1``/``ln2`` are ``x̂``, not the HF ``ln_1``/``ln_2``
outputs ``x̂·w + b`` (METHODS.md §2 assumed otherwise). A per-unit affine map there equals the
HF-side map reparameterised (``ω' = ω``, ``b' = b ⊙ w``). TL also calls ``ln1`` three times per
block (for the query, key and value inputs), so a hook at ``ln1`` fires three times per forward
pass with the same value; steering applies the same map to each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer

# Listed in forward-pass order within a block: Site ordering follows it.
_HOOKS = {
    "resid_pre": "blocks.{L}.hook_resid_pre",
    "ln1": "blocks.{L}.ln1.hook_normalized",
    "attn_z": "blocks.{L}.attn.hook_z",
    "attn_out": "blocks.{L}.hook_attn_out",
    "resid_mid": "blocks.{L}.hook_resid_mid",
    "ln2": "blocks.{L}.ln2.hook_normalized",
    "mlp_pre": "blocks.{L}.mlp.hook_pre",
    "mlp_pre_linear": "blocks.{L}.mlp.hook_pre_linear",
    "mlp_post": "blocks.{L}.mlp.hook_post",
    "mlp_out": "blocks.{L}.hook_mlp_out",
    "resid_post": "blocks.{L}.hook_resid_post",
}
POINTS: tuple[str, ...] = tuple(_HOOKS)
_HOOK_RE = {re.compile("^" + re.escape(h).replace(r"\{L\}", r"(\d+)") + "$"): p
            for p, h in _HOOKS.items()}
_SPEC_RE = re.compile(r"^L(\d+)(?:-(\d+))?\.(\w+)$|^(all)\.(\w+)$")


class SiteError(ValueError):
    """A site that does not exist on a model, or a malformed site string."""


@dataclass(frozen=True)
class Site:
    """A hooked location: block ``layer`` and a short ``point`` name (see module docstring).

    Sites sort in forward-pass order (layer, then position of the point inside the block).
    """

    layer: int
    point: str

    def __lt__(self, other: Site) -> bool:
        return (self.layer, POINTS.index(self.point)) < (other.layer, POINTS.index(other.point))

    def __post_init__(self) -> None:
        if self.point not in _HOOKS:
            raise SiteError(f"unknown site point {self.point!r}; known points: {', '.join(POINTS)}")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise SiteError(f"site layer must be a non-negative int, got {self.layer!r}")

    def __str__(self) -> str:
        return f"L{self.layer}.{self.point}"

    @classmethod
    def parse(cls, text: str | Site) -> Site:
        """``"L3.mlp_post"`` (or a TL hook name such as ``"blocks.3.hook_mlp_out"``) -> Site."""
        if isinstance(text, Site):
            return text
        if not isinstance(text, str):
            raise SiteError(f"a site is a string such as 'L3.mlp_post', got {text!r}")
        m = re.fullmatch(r"L(\d+)\.(\w+)", text.strip())
        if m:
            return cls(int(m.group(1)), m.group(2))
        for pattern, point in _HOOK_RE.items():
            m = pattern.match(text.strip())
            if m:
                return cls(int(m.group(1)), point)
        raise SiteError(f"cannot parse site {text!r}; expected e.g. 'L3.mlp_post' "
                        f"(points: {', '.join(POINTS)})")

    def key(self, name: str) -> str:
        """The key of this site's tensor ``name`` in a steerer's state: ``"3_mlp_out__omega"``
        (torch's ParameterDict keys cannot contain ".")."""
        return f"{self.layer}_{self.point}__{name}"

    @classmethod
    def from_key(cls, key: str) -> tuple[Site, str]:
        """Inverse of :meth:`key`: ``(site, name)``."""
        layer, sep, rest = key.partition("_")
        point, sep2, name = rest.partition("__")
        if not (sep and sep2 and layer.isdigit() and name):
            raise SiteError(f"not a site tensor key: {key!r} (expected e.g. '3_mlp_out__omega')")
        return cls(int(layer), point), name

    @property
    def hook_name(self) -> str:
        return _HOOKS[self.point].format(L=self.layer)

    def validate(self, model: HookedTransformer) -> Site:
        """Raise ``SiteError`` naming the model if this site does not exist on it."""
        n_layers = model.cfg.n_layers
        if self.layer >= n_layers:
            raise SiteError(f"site {self} does not exist on {model.cfg.model_name}: "
                            f"it has {n_layers} layers (0..{n_layers - 1})")
        if self.hook_name not in model.hook_dict:
            have = ", ".join(points_of(model))
            raise SiteError(f"site {self} does not exist on {model.cfg.model_name} "
                            f"({model.cfg.original_architecture}); points on this model: {have}")
        return self

    def width(self, model: HookedTransformer) -> int:
        """Number of units at this site (heads are flattened for ``attn_z``)."""
        self.validate(model)
        cfg = model.cfg
        if self.point.startswith("mlp_") and self.point != "mlp_out":
            return int(cfg.d_mlp)
        if self.point == "attn_z":
            return int(cfg.n_heads * cfg.d_head)
        return int(cfg.d_model)


def points_of(model: HookedTransformer) -> list[str]:
    """The points that exist at layer 0 of ``model`` (architectures differ, e.g. gated MLPs)."""
    return [p for p in POINTS if Site(0, p).hook_name in model.hook_dict]


def to_units(site: Site, acts: torch.Tensor) -> Float[torch.Tensor, "... d"]:
    """View hook output as ``[..., units]`` (flattens heads for ``attn_z``)."""
    if site.point == "attn_z":
        return acts.flatten(-2)
    return acts


def from_units(site: Site, units: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_units`: back to the hook's own shape (``like``)."""
    return units.reshape(like.shape)


def all_layers(model: HookedTransformer, point: str,
               layers: range | list[int] | None = None) -> list[Site]:
    """``point`` at every layer (or the given ``layers``) of ``model``, validated."""
    layers = range(model.cfg.n_layers) if layers is None else layers
    return [Site(int(layer), point).validate(model) for layer in layers]


def parse_sites(spec: str | list, model: HookedTransformer | None = None) -> list[Site]:
    """Parse a site list: ``"L3.mlp_out,L0-5.attn_out,all.ln2"`` (or a list of strings/Sites).

    ``all.X`` needs ``model``. Sites are validated when ``model`` is given; duplicates are
    dropped and order is kept.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Site] = []
    for item in items:
        if isinstance(item, Site):
            out.append(item)
            continue
        text = item.strip()
        m = _SPEC_RE.match(text)
        if m and m.group(4):
            if model is None:
                raise SiteError(f"site spec {text!r} needs a model to know the layer count")
            out.extend(all_layers(model, m.group(5)))
        elif m and m.group(2):
            out.extend(Site(i, m.group(3)) for i in range(int(m.group(1)), int(m.group(2)) + 1))
        else:
            out.append(Site.parse(text))
    if not out:
        raise SiteError(f"empty site specification {spec!r}")
    out = list(dict.fromkeys(out))
    if model is not None:
        for site in out:
            site.validate(model)
    return out


def architecture_family(model: HookedTransformer) -> str:
    """``"gemma"`` (norms before and after each sub-block), ``"gpt2"`` (LayerNorm) or ``"llama"``."""
    cfg = model.cfg
    if getattr(cfg, "use_normalization_before_and_after", False):
        return "gemma"
    if str(cfg.normalization_type).startswith("LN"):
        return "gpt2"
    return "llama"


# Default sites per method and family, after METHODS.md §2-§5 (the papers' best layers):
# AurA hooks the MLP projections; AcT the post-LN outputs (Gemma) or LayerNorms (GPT-2) or the
# attention output (Llama); ITI-c the attention output; ActAdd/CAA one middle residual layer.
_DEFAULTS = {
    "aura": {"gpt2": ["mlp_pre", "mlp_out"], "gemma": ["mlp_pre", "mlp_pre_linear"],
             "llama": ["mlp_pre", "mlp_pre_linear", "mlp_out"]},
    "act": {"gpt2": ["ln1", "ln2"], "gemma": ["attn_out", "mlp_out"], "llama": ["attn_out"]},
    "lineas": {"gpt2": ["ln1", "ln2"], "gemma": ["attn_out", "mlp_out"], "llama": ["ln2"]},
    "iti": {"gpt2": ["attn_out"], "gemma": ["attn_out"], "llama": ["attn_out"]},
}
_METHOD_GROUP = {"aura": "aura", "det0": "aura", "damp": "aura", "mean_shift": "act",
                 "linear_act": "act", "lineas": "lineas", "dsas": "lineas", "iti": "iti"}
_MID_LAYER = {"actadd": "resid_pre", "caa": "resid_pre"}


def default_sites(model: HookedTransformer, method: str) -> list[Site]:
    """The default sites of ``method`` on ``model``'s architecture (METHODS.md §2-§5)."""
    if method in _MID_LAYER:
        return [Site(model.cfg.n_layers // 2, _MID_LAYER[method]).validate(model)]
    if method not in _METHOD_GROUP:
        known = ", ".join(sorted([*_METHOD_GROUP, *_MID_LAYER]))
        raise SiteError(f"no default sites for unknown method {method!r}; known: {known}")
    points = _DEFAULTS[_METHOD_GROUP[method]][architecture_family(model)]
    # Forward-pass order, which causal (layer-by-layer) estimation relies on.
    return sorted(s for p in points for s in all_layers(model, p))


def site_spec(sites: list[Site], n_layers: int | None = None) -> str:
    """The compact spec :func:`parse_sites` reads back: ``"all.mlp_out,L3-5.attn_out"``.

    Points are listed in first-seen order; a point present at every one of ``n_layers`` layers
    is written ``all.X``, otherwise runs of consecutive layers become ``L<a>-<b>.X``.
    """
    by_point: dict[str, list[int]] = {}
    for s in sites:
        by_point.setdefault(s.point, []).append(s.layer)
    parts = []
    for point, layers in by_point.items():
        layers = sorted(set(layers))
        if n_layers is not None and layers == list(range(n_layers)):
            parts.append(f"all.{point}")
            continue
        start = prev = layers[0]
        for layer in [*layers[1:], None]:
            if layer is not None and layer == prev + 1:
                prev = layer
                continue
            parts.append(f"L{start}.{point}" if start == prev else f"L{start}-{prev}.{point}")
            if layer is not None:
                start = prev = layer
    return ",".join(parts)


def site_device(model: HookedTransformer, site: Site) -> torch.device:
    """Where ``site``'s block lives: TransformerLens spreads the blocks over several GPUs when
    the model is loaded with ``n_devices > 1``; otherwise the model's one device."""
    for p in model.blocks[site.layer].parameters():
        return p.device
    return torch.device(model.cfg.device)
