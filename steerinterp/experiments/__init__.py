"""Experiments built from the library: the named fit/calibration/evaluation splits
(``fitsets``), the main job and its report, the λ fronts, and ``steerinterp figures``'
analyses. Nothing below this package imports it."""
