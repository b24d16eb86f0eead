"""``recording()``: the one way a reading hook is attached, :func:`~steerinterp.steer.steered`'s
sibling. Together they are the only callers of ``model.hooks``.

The ordering rule, written once: a TransformerLens hook point runs its hooks in the order they
were added. A ``recording()`` block entered *inside* a ``steered()`` block (after it) reads the
steered activations; one entered *before* ``steered()`` reads what the steering map receives::

    with recording(model, sites, read_in), steered(model, steerer), recording(model, sites, out):
        model(tokens)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer

from .sites import Site, to_units

Reader = Callable[[Site, Float[torch.Tensor, "batch pos d"]], None]


@contextmanager
def recording(model: HookedTransformer, sites: Sequence[Site], read: Reader):
    """Call ``read(site, units)`` with each site's activations (as ``[batch, pos, units]``, see
    :func:`~steerinterp.sites.to_units`) on every forward pass inside the block. The hooks
    return nothing, so they never change the run; they are removed on exit, also after an
    exception."""
    def hook_for(site: Site):
        def hook(acts, hook):
            read(site, to_units(site, acts))
        return hook

    with model.hooks(fwd_hooks=[(s.hook_name, hook_for(s)) for s in sites]):
        yield model


def last_layer(sites: Sequence[Site]) -> int:
    """``stop_at_layer`` for a pass that only needs ``sites``: nothing after them runs."""
    return max(s.layer for s in sites) + 1
