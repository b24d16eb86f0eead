"""Shared fixtures: tiny random models of both architectures (fast, no download)."""

import pytest
from jaxtyping import install_import_hook

# jaxtyping shape annotations (TL's axis names) and every other annotation are checked at run
# time by beartype under pytest only (DESIGN.md §4), installed before the package is imported
# and left on for lazy imports. Checked: the core math, every steering method (steer.*), the
# activation stores and their collection, generation, perplexity and the statistics, the
# analyses and the executors. Not yet: cli (typer fills options with its own placeholders),
# experiments, plots, bench, data, io, models, provenance and the rest of evaluate.
# Bad-input tests call through typecheck.unchecked / typecheck.checks_off.
CHECKED = ["steerinterp." + m for m in (
    "hooks", "metrics", "sites", "tokens", "train", "steer", "collection", "store", "evaluate",
    "analysis", "executors", "io", "provenance", "data", "models", "assets", "errors",
    "machine")]
install_import_hook(CHECKED, "typecheck.checker")

from steerinterp.models import tiny_model  # noqa: E402


@pytest.fixture(scope="session", params=["gpt2", "gemma"])
def tiny(request):
    """A tiny model per architecture (LayerNorm/GELU and RMSNorm/gated-MLP)."""
    return tiny_model(request.param, seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2():
    return tiny_model("gpt2", seed=0)


@pytest.fixture(scope="session")
def tiny_gemma():
    return tiny_model("gemma", seed=0)


TEXTS = [
    "the cat sat on the mat",
    "hello there, my friend",
    "a",
    "activation steering edits what a model computes",
    "short one",
    "yet another sentence that is somewhat longer than the others in this list",
]


@pytest.fixture
def texts():
    return list(TEXTS)


@pytest.fixture
def two_sets():
    """Two small sets of different sentences (source, target) for quick fits."""
    return (["the cat sat on the mat today", "a dog ran in the park at noon",
             "rain fell on the old town", "she read a long book by the fire"],
            ["stocks fell sharply in early trading", "the committee approved the budget",
             "engineers tested the new bridge", "the festival drew large crowds"])
