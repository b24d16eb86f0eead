"""What a loaded model is, recorded on it (``model.steerinterp_info``) and copied into every
store and steerer: name, architecture, depth, weight processing flags and a weight signature.
A store or steerer is refused on a model whose record differs (its statistics would live in
another basis); :func:`check_provenance` names what differs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformer_lens import HookedTransformer

__all__ = ["NO_PROCESSING", "ModelInfo", "check_provenance", "model_info", "same_model",
           "same_weights", "weight_signature"]

# Weight processing flags used for every model we load. Recorded so that a store or steerer
# produced under other flags is refused (statistics would live in another basis).
NO_PROCESSING = {
    "fold_ln": False,
    "center_writing_weights": False,
    "center_unembed": False,
    "fold_value_biases": False,
    "refactor_factored_attn_matrices": False,
}


@dataclass(frozen=True)
class ModelInfo:
    """Provenance of a loaded model, attached as ``model.steerinterp_info``."""

    name: str
    weight_processing: dict
    prepend_bos: bool
    architecture: str
    n_layers: int | None = None  # None in files written before these two were recorded
    weights: tuple[float, ...] | None = None  # :func:`weight_signature`

    def to_dict(self) -> dict:
        """As JSON reads it back (lists, not tuples), so a saved record compares equal."""
        d = asdict(self)
        d["weights"] = None if self.weights is None else list(self.weights)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelInfo:
        """Inverse of :meth:`to_dict`."""
        weights = d.get("weights")
        return cls(**{**d, "weights": None if weights is None else tuple(weights)})


def weight_signature(model: HookedTransformer, k: int = 8) -> tuple[float, ...]:
    """``k`` embedding and ``k`` last-block W_Q entries at fixed positions: two models with the
    same name, depth and widths but other weights (another seed, a fine-tune) differ here,
    while a dtype or device change moves them by at most bf16 rounding (see
    :func:`same_weights`). Cheap: reads 2k numbers."""
    picks = []
    for w in (model.embed.W_E, model.blocks[-1].attn.W_Q):
        flat = w.detach().reshape(-1)
        picks.extend(float(flat[i]) for i in spread(flat.numel(), k))
    return tuple(round(v, 6) for v in picks)


def spread(n: int, k: int) -> list[int]:
    """``k`` evenly spread positions in ``range(n)``, first and last included, in integer
    arithmetic (a float32 linspace rounds past the end for n > 2^24, e.g. Gemma's W_E)."""
    return [i * (n - 1) // max(k - 1, 1) for i in range(k)]


def same_weights(a, b) -> bool:
    """Whether two signatures are the same weights up to bf16 rounding (unknown: yes)."""
    if a is None or b is None:
        return True
    if len(a) != len(b):
        return False
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    scale = float(b.pow(2).mean().sqrt()) + 1e-12
    return bool(((a - b).abs() <= 1e-2 * torch.maximum(a.abs(), b.abs()) + 1e-3 * scale).all())


def same_model(a: dict, b: dict) -> bool:
    """Whether two provenance records (``ModelInfo.to_dict()``) name the same model."""
    keys = ("name", "weight_processing", "prepend_bos", "architecture")
    if any(a.get(k) != b.get(k) for k in keys):
        return False
    depths = (a.get("n_layers"), b.get("n_layers"))
    return (None in depths or depths[0] == depths[1]) and same_weights(a.get("weights"),
                                                                       b.get("weights"))


def model_info(model: HookedTransformer) -> ModelInfo:
    """The provenance record of ``model`` (models built outside steerinterp get a best guess)."""
    info = getattr(model, "steerinterp_info", None)
    if info is not None:
        return info
    return ModelInfo(
        name=model.cfg.model_name,
        weight_processing=_flags_of(model),
        prepend_bos=bool(model.cfg.default_prepend_bos),
        architecture=str(model.cfg.original_architecture),
        n_layers=model.cfg.n_layers, weights=weight_signature(model),
    )


def check_provenance(recorded: dict, widths: dict[str, int], model: HookedTransformer,
                     what: str, verb: str, error: type[Exception]) -> None:
    """Refuse ``model`` unless it is the one ``what`` was ``verb`` on: same name, same weight
    processing (statistics live in that basis), same width at every site."""
    from .sites import Site

    info = model_info(model)
    if info.name != recorded["name"]:
        raise error(f"{what} was {verb} on {recorded['name']!r}; it cannot be used with "
                    f"{info.name!r}")
    if recorded.get("n_layers") is not None and recorded["n_layers"] != info.n_layers:
        raise error(f"{what} was {verb} on a {recorded['n_layers']}-layer {info.name}; this "
                    f"one has {info.n_layers} layers")
    if info.weight_processing != recorded["weight_processing"]:
        raise error(f"{what} was {verb} with weight processing {recorded['weight_processing']}, "
                    f"this model has {info.weight_processing}; load models with "
                    "steerinterp.load_model")
    for site, width in widths.items():
        have = Site.parse(site).width(model)
        if have != width:
            raise error(f"{what} has width {width} at {site}, the model has {have}")
    if not same_weights(recorded.get("weights"), info.weights):
        raise error(f"{what} was {verb} on other weights of {info.name!r} (another seed or "
                    "checkpoint: the weight signature differs)")


def _flags_of(model: HookedTransformer) -> dict:
    # A TL model loaded with processing has normalization_type "LNPre"/"RMSPre" (folded LN).
    folded = str(model.cfg.normalization_type).endswith("Pre")
    flags = dict(NO_PROCESSING)
    flags["fold_ln"] = folded
    return flags


def _attach_info(model: HookedTransformer, name: str) -> HookedTransformer:
    model.steerinterp_info = ModelInfo(
        name=name,
        weight_processing=dict(NO_PROCESSING),
        prepend_bos=bool(model.cfg.default_prepend_bos),
        architecture=str(model.cfg.original_architecture),
        n_layers=model.cfg.n_layers, weights=weight_signature(model),
    )
    model.eval()
    return model
