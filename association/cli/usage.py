"""A user's mistakes on the command line: one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

USAGE_EXIT = 2
"""The exit code of a mistake in the command line or its inputs."""


class UsageError(Exception):
    """A mistake of the user's; the message says what, naming the option as typed."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(USAGE_EXIT)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def one_line(text: str) -> str:
    """`text` with its lines joined: a driver's multi-line error as one paragraph."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())
