"""Running click commands in tests, with stderr kept apart from stdout on every click version."""

from __future__ import annotations

import click
from click.testing import CliRunner, Result


def run_command(command: click.Command, *args: str, catch_exceptions: bool = False) -> Result:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()  # click >= 8.2 keeps stderr apart by default
    return runner.invoke(command, list(args), catch_exceptions=catch_exceptions)
