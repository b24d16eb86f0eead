"""The run-time checker the test suite installs on the package (conftest.py): beartype with
PEP 484's numeric tower, so an int passes where a float is annotated, as Python intends."""

import inspect

from beartype import BeartypeConf, beartype

checker = beartype(conf=BeartypeConf(is_pep484_tower=True))


def unchecked(fn):
    """``fn`` without the test-time checker: what a user calls (no checker runs outside the
    tests), for bad-input tests of the project's own error messages."""
    return inspect.unwrap(fn)
