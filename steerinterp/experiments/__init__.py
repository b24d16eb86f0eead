"""Experiments built from the library: the named fit/calibration/evaluation splits
(``fitsets``), every named size (``sizes``), the main job and its report, the λ fronts, and
``steerinterp figures``' analyses. No lower layer imports this package (only the top-level
facade re-exports ``toxicity_fit_sets``; ``tests/test_architecture.py``)."""
