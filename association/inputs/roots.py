"""Data roots: the directories an event's file paths may point into."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from association.inputs.readers import BadInputError


class DataRoots:
    """The directories input files must lie in, symlinks resolved before the check.

    An event names files by path; without this, it could make the master open
    anything it can read (``/etc/shadow``) and publish what the error says
    about it. A path outside the roots is refused before it is opened.

    Parameters
    ----------
    roots : iterable of path
        The allowed directories.
    """

    def __init__(self, roots: Iterable[str | Path]) -> None:
        self.roots = tuple(dict.fromkeys(Path(r).resolve() for r in roots))
        if not self.roots:
            raise ValueError("no data roots: every input file would be refused")

    def check(self, path: str | Path, kind: str) -> Path:
        """The file's real path, if it lies in a root; else `BadInputError` naming both."""
        real = Path(path).resolve()
        if any(real.is_relative_to(root) for root in self.roots):
            return real
        listed = ", ".join(str(r) for r in self.roots)
        raise BadInputError(
            f"resolves to '{real}', outside the data roots ({listed}); not read "
            "(settings.data_roots names the directories input files may come from)",
            path=path,
            kind=kind,
        )
