"""steerinterp: activation steering on TransformerLens, and why it works.

Public API (re-exports only)::

    from steerinterp import load_model, load_texts, toxicity_fit_sets, make, steered, load_steerer
"""

from .collection import collect
from .data import length_match, load_texts
from .experiments.fitsets import toxicity_fit_sets
from .models import load_model, tiny_model
from .sites import Site, default_sites, parse_sites
from .steer import available, load_steerer, make, steered
from .store import ActivationStore

__all__ = ["ActivationStore", "Site", "available", "collect", "default_sites", "length_match",
           "load_model", "load_steerer", "load_texts", "make", "parse_sites", "steered",
           "tiny_model", "toxicity_fit_sets"]
__version__ = "0.1.0"
