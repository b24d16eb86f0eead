"""Figures: one ``plot_<analysis>(df)`` per analysis, each drawn from a tidy DataFrame, and
``save_figure`` writing the PNG next to the CSV it was drawn from."""

from .base import STYLE, figure, save_figure

__all__ = ["STYLE", "figure", "save_figure"]
