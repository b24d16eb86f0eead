"""``steered()``: the one way steering hooks get attached — scoped, composable, exception-safe."""

from __future__ import annotations

from contextlib import contextmanager

from transformer_lens import HookedTransformer

from .base import Steerer, SteerError


@contextmanager
def steered(model: HookedTransformer, *steerers: Steerer, strength: float | None = None):
    """Run ``model`` with ``steerers`` active inside the block; hooks are removed on exit, also
    after an exception.

    Steerers that share a site compose in argument order (the second sees the first's output).
    ``strength`` overrides every steerer's configured λ; each method checks it against its own
    range. With no steerers the block runs the unsteered model (handy in evaluation loops).

    >>> with steered(model, aura, strength=0.5):
    ...     logits = model("some text")
    """
    # Steerers active on this model, across nested blocks: one steerer applied twice is a
    # silent double edit, so it is refused (different steerers compose, as documented).
    active = model.__dict__.setdefault("_steerinterp_active", set())
    for s in steerers:
        if not isinstance(s, Steerer):
            raise SteerError(f"steered() takes fitted steerers, got {type(s).__name__}")
        s.check_model(model)
    ids = [id(s) for s in steerers]
    if len(set(ids)) < len(ids) or active & set(ids):
        raise SteerError("this steerer is already active on the model (nested steered() or "
                         "passed twice); it would be applied twice")
    hooks = []
    for s in steerers:
        s.place(model)  # tensors follow the model: CPU, GPU, or each block's GPU when split
        hooks.extend(s.fwd_hooks(strength))
    active.update(ids)
    try:
        with model.hooks(fwd_hooks=hooks):
            yield model
    finally:
        active.difference_update(ids)
