"""Figures: one ``plot_<analysis>(df)`` per analysis, each drawn from a tidy DataFrame, and
``save_figure`` writing the PNG next to the CSV it was drawn from."""

from .attribution import plot_site_attribution, plot_unit_attribution, plot_unit_validation
from .auroc import (auroc_quantiles, plot_auroc_distribution, plot_auroc_map, plot_expert_overlap,
                    plot_expert_tokens)
from .base import STYLE, figure, save_figure
from .convergence import plot_convergence
from .diagnosis import plot_diagnosis
from .evaluation import plot_method_bars, plot_pareto
from .fronts import plot_fronts
from .sae import plot_feature_changes, plot_feature_overlap, plot_shift_alignment
from .sparsity import plot_aura_lineas_overlap, plot_support_path, plot_surviving_layers
from .token_scales import plot_scale_by_site, plot_token_heatmap, token_scales_html

__all__ = ["STYLE", "auroc_quantiles", "figure", "plot_aura_lineas_overlap",
           "plot_auroc_distribution", "plot_auroc_map", "plot_convergence", "plot_diagnosis", "plot_expert_overlap",
           "plot_expert_tokens", "plot_feature_changes", "plot_feature_overlap", "plot_fronts",
           "plot_method_bars", "plot_pareto", "plot_scale_by_site", "plot_shift_alignment",
           "plot_site_attribution", "plot_support_path", "plot_surviving_layers",
           "plot_token_heatmap", "plot_unit_attribution", "plot_unit_validation", "save_figure",
           "token_scales_html"]
