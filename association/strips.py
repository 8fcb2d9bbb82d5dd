"""Thin strips of chunks a Slice does not hold, cached across visits while unchanged."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class StripCache:
    """Strips of margin chunks, by (chunk, owned chunks), for matching only.

    A strip is dropped when an update may touch its chunk (the caller gives
    the chunks of a visit's DIASources and their neighbours: an Object matched
    within the radius lies in one of them), so what is cached always equals
    the database. At most `max_entries` strips are kept, the oldest going first.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._strips: OrderedDict[tuple[int, tuple[int, ...]], dict[str, np.ndarray]] = (
            OrderedDict()
        )

    def get(self, chunk: int, owned: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        """The cached strip, or None."""
        key = (chunk, owned)
        strip = self._strips.get(key)
        if strip is not None:
            self._strips.move_to_end(key)
        return strip

    def put(self, chunk: int, owned: tuple[int, ...], strip: dict[str, np.ndarray]) -> None:
        """Keep a strip read from the database."""
        self._strips[(chunk, owned)] = strip
        while len(self._strips) > self.max_entries:
            self._strips.popitem(last=False)

    def invalidate(self, chunks: np.ndarray) -> int:
        """Drop the strips of `chunks`; how many went."""
        chunk_set = set(np.asarray(chunks).tolist())
        drop = [key for key in self._strips if key[0] in chunk_set]
        for key in drop:
            del self._strips[key]
        return len(drop)
