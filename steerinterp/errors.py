"""Exceptions that mean "the user's input names something unusable here"; importable without
torch, so the CLI can catch them without slowing ``--help``."""


class ModelUnavailable(RuntimeError):
    """A model that cannot be loaded on this machine (Hub unreachable and not cached)."""


class ExecutorError(RuntimeError):
    """An executor that cannot run here (Ray missing, cluster unreachable) or a condition its
    workers could not finish."""
