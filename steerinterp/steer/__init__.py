"""Steering methods: one file per method, registered by name.

>>> from steerinterp.steer import make, available
>>> aura = make("aura").fit(model, source=toxic_texts, target=wiki_texts)
"""

from . import actadd  # noqa: F401  (registers the method)
from . import aura  # noqa: F401  (registers the method)
from . import dsas  # noqa: F401  (registers the method)
from . import iti  # noqa: F401  (registers the method)
from . import linear_act  # noqa: F401  (registers the method)
from . import lineas  # noqa: F401  (registers the method)
from . import mean_shift  # noqa: F401  (registers the method)
from .apply import steered
from .base import (REGISTRY, SteerConfig, SteerError, Steerer, available, load_or_fit,
                   load_steerer, make)
from .fold import fold_into_weights

__all__ = ["REGISTRY", "SteerConfig", "SteerError", "Steerer", "available",
           "fold_into_weights", "load_or_fit", "load_steerer", "make", "steered"]
