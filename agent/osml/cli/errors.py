"""The command-line error contract shared by every ``osml`` command: a user error is one
``error: <message>`` line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from osml.errors import OsmlError

__all__ = ["one_line_errors"]

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(func: F) -> F:
    """Turn the errors a user can cause (OsmlError, a settings ValueError, an OSError such as an
    unwritable output directory) into one ``error:`` line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (OsmlError, ValueError) as exc:
            message = str(exc)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            message = f"{where}{exc.strerror or exc}"
        click.echo("error: " + " ".join(message.split()), err=True)
        sys.exit(2)

    return wrapper  # type: ignore[return-value]
