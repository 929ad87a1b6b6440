"""The ``osml`` command line: thin click commands over the library (``osml --help``).

The entry point is :func:`osml.cli.main.main`; ``python -m osml.cli`` runs it too.
"""
