"""The ``nightpipe`` command line."""

from association.cli.main import main

__all__ = ["main"]
