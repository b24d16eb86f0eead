"""Why does the steering work? Each analysis returns a tidy DataFrame (columns documented in
its docstring); ``steerinterp.plots`` draws each one.

>>> from steerinterp.analysis import neuron_auroc, layer_sparsity, token_scales, sae_overlap, attribute
>>> from steerinterp.analysis import diagnose
"""

from .attribution import attribute, validate_units
from .convergence import lineas_convergence
from .auroc_map import AnalysisError, expert_tokens, neuron_auroc, top_experts
from .diagnosis import diagnose
from .experts import aura_lineas_overlap, expert_overlap, expert_sets, select_experts
from .sae_overlap import feature_changes, feature_set_overlap, sae_overlap, shift_alignment
from .sae_train import load_sae, train_sae
from .sparsity import fit_lineas_path, layer_sparsity
from .token_scales import mean_scale_by_site, token_scales

__all__ = ["AnalysisError", "attribute", "aura_lineas_overlap", "diagnose", "expert_overlap",
           "expert_sets", "expert_tokens", "feature_changes", "feature_set_overlap",
           "fit_lineas_path", "layer_sparsity", "lineas_convergence", "load_sae", "mean_scale_by_site", "neuron_auroc",
           "sae_overlap", "select_experts", "shift_alignment", "token_scales", "top_experts",
           "train_sae", "validate_units"]
