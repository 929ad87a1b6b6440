"""The ``osml`` command line: thin click commands over the library (``osml --help``)."""

from osml.cli.main import main

__all__ = ["main"]
