"""``steerinterp`` command line (typer): one module per command group, all registered on
:data:`~steerinterp.cli.common.app`. Experiment settings live here, not in library configs."""

from __future__ import annotations

import click

from ..errors import ExecutorError, ModelUnavailable
from . import data, steering, jobs, bench  # noqa: F401,I001  (register, in --help order)
from .common import app, console

__all__ = ["app", "main"]

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, KeyError,
               ModelUnavailable, ExecutorError)


def _click_errors(name: str) -> tuple[type, ...]:
    """``name`` from click and from the copy of click that newer typer vendors
    (``typer._click``), whose exceptions do not subclass click's."""
    found = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        return tuple(found)
    return tuple(found + [getattr(vendored, name)] if hasattr(vendored, name) else found)


def main() -> None:
    """Console entry point: mistakes in the input (bad options, files, steerers for another
    model...) print one line naming the problem instead of a traceback; exit status 2."""
    try:
        rc = app(standalone_mode=False, prog_name="steerinterp")
    except USER_ERRORS as err:
        console().print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except _click_errors("Abort"):
        raise SystemExit(130) from None
    except _click_errors("ClickException") as err:
        if "NoArgsIsHelp" in type(err).__name__:  # bare `steerinterp`: help was the answer
            console().print(err.format_message(), highlight=False)
            raise SystemExit(0) from None
        hint = f" (see `steerinterp {err.ctx.info_name} --help`)" if getattr(
            err, "ctx", None) is not None and err.ctx.info_name != "steerinterp" else ""
        console().print(f"[red]error:[/red] {err.format_message()}{hint}", highlight=False,
                        soft_wrap=True)
        raise SystemExit(2) from None
    raise SystemExit(rc if isinstance(rc, int) else 0)


