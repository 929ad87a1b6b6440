"""``python -m osml.cli``: the same command line as the ``osml`` entry point."""

from osml.cli.main import main

if __name__ == "__main__":  # pragma: no cover
    main()
