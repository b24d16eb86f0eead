"""Shared fixtures: tiny random models of both architectures (fast, no download)."""

import pytest
from jaxtyping import install_import_hook

# jaxtyping shape annotations (TL's axis names) and every other annotation are checked at run
# time by beartype under pytest only (DESIGN.md §4), installed before the package is imported
# and left on for lazy imports. Every module is checked except the CLI (steerinterp.cli):
# typer declares each option's default as a typer.OptionInfo placeholder in the signature,
# which the checker sees in place of the annotated type (11 failures and 11 errors when tried).
# Bad-input tests that pass a wrongly typed value on purpose, to see the package's own error
# message, go through typecheck.unchecked / typecheck.checks_off.
CHECKED = ["steerinterp." + m for m in (
    "hooks", "metrics", "sites", "tokens", "train", "steer", "collection", "store", "evaluate",
    "analysis", "executors", "io", "provenance", "data", "models", "assets", "errors",
    "machine", "experiments", "plots", "bench")]
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
