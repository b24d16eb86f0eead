"""The run-time checker the test suite installs on the package (conftest.py): beartype with
PEP 484's numeric tower, so an int passes where a float is annotated, as Python intends."""

import inspect
from contextlib import contextmanager

import jaxtyping
from beartype import BeartypeConf, beartype

checker = beartype(conf=BeartypeConf(is_pep484_tower=True))


def unchecked(fn):
    """``fn`` without the test-time checker: what a user calls (no checker runs outside the
    tests), for bad-input tests of the project's own error messages."""
    return inspect.unwrap(fn)


@contextmanager
def checks_off():
    """The block runs without the test-time checker, as a user's code does: for bad-input
    tests whose value reaches the project's own check through several checked calls (``make``
    → a method's Config, a class's ``__init__``), where :func:`unchecked` cannot reach.
    jaxtyping reads this switch on every call."""
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)
