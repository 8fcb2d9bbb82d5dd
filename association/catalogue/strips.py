"""Thin strips of chunks a Slice does not hold, cached across visits and kept current."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

KEY_COLUMN = "diaObjectId"


@dataclass(frozen=True)
class Strip:
    """Some Object columns of the fine-index ranges ``[lo, hi)`` of one chunk.

    Rows are sorted by diaObjectId; the arrays are never written in place, so
    a copy handed out stays as it was.
    """

    lo: np.ndarray
    hi: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns[KEY_COLUMN])

    def contains(self, fine: np.ndarray) -> np.ndarray:
        """Whether each fine index lies in one of the strip's ranges."""
        i = np.searchsorted(self.lo, fine, "right") - 1
        return (i >= 0) & (fine < self.hi[np.maximum(i, 0)])

    def upserted(self, rows: Mapping[str, np.ndarray]) -> Strip:
        """The strip with ``rows`` (sorted by unique id) replacing or joining its own."""
        ids, new = self.columns[KEY_COLUMN], rows[KEY_COLUMN]
        pos = np.searchsorted(ids, new)
        old = pos < len(ids)
        old[old] = ids[pos[old]] == new[old]
        columns = {}
        for name, col in self.columns.items():
            value = np.asarray(rows[name], col.dtype)
            out = col.copy()
            out[pos[old]] = value[old]
            columns[name] = np.insert(out, pos[~old], value[~old])
        return Strip(self.lo, self.hi, columns)


class StripCache:
    """Strips of margin chunks, by (chunk, owned chunks), for matching only.

    Every visit's decided Objects are applied to the strips they fall in
    (`decided`), so what is cached always equals the catalogue. Until the
    visit is written (`written`) they are also kept aside and applied to any
    strip read from the database meanwhile, which does not have them yet;
    while a read from another thread is under way (`read_started`, to
    `read_ended`) they are kept even once written, as its snapshot may be
    older than the write. At most `max_entries` strips are kept, the least
    recently used going first.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._strips: OrderedDict[tuple[int, tuple[int, ...]], Strip] = OrderedDict()
        self._unwritten: OrderedDict[int, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]
        self._unwritten = OrderedDict()
        self._reads = 0
        self._written: list[int] = []

    def __len__(self) -> int:
        return len(self._strips)

    def get(self, chunk: int, owned: tuple[int, ...]) -> Strip | None:
        """The cached strip, or None."""
        key = (chunk, owned)
        strip = self._strips.get(key)
        if strip is not None:
            self._strips.move_to_end(key)
        return strip

    def put(
        self,
        chunk: int,
        owned: tuple[int, ...],
        lo: np.ndarray,
        hi: np.ndarray,
        columns: Mapping[str, np.ndarray],
    ) -> Strip:
        """Keep a strip read from the database (rows in any order); return it."""
        order = np.argsort(columns[KEY_COLUMN], kind="stable")
        strip = Strip(np.asarray(lo), np.asarray(hi), {k: v[order] for k, v in columns.items()})
        for chunk_of_row, fine, rows in self._unwritten.values():
            take = np.flatnonzero(chunk_of_row == chunk)
            take = take[strip.contains(fine[take])]
            if len(take):
                strip = strip.upserted({k: rows[k][take] for k in strip.columns})
        self._strips[(chunk, owned)] = strip
        while len(self._strips) > self.max_entries:
            self._strips.popitem(last=False)
        return strip

    def clear(self) -> None:
        """Drop every strip."""
        self._strips.clear()

    def decided(
        self,
        visit: int,
        chunk_of_row: np.ndarray,
        fine: np.ndarray,
        rows: Mapping[str, np.ndarray],
    ) -> int:
        """A visit's changed Objects are decided: patch the strips, and keep them until written.

        Returns the number of strips changed (see `patch`).
        """
        ordered = np.argsort(rows[KEY_COLUMN], kind="stable")
        kept = {k: np.asarray(v)[ordered] for k, v in rows.items()}
        self._unwritten[visit] = (
            np.asarray(chunk_of_row)[ordered],
            np.asarray(fine)[ordered],
            kept,
        )
        return self.patch(chunk_of_row, fine, rows)

    def written(self, visit: int) -> None:
        """The visit is in the database: strips read from now on have its Objects."""
        if self._reads:
            self._written.append(visit)
        else:
            self._unwritten.pop(visit, None)

    def read_started(self) -> None:
        """A read of strips from the database begins elsewhere; `put` its strips, then `read_ended`."""
        self._reads += 1

    def read_ended(self) -> None:
        """A read begun with `read_started` is over (its strips put, or failed)."""
        self._reads -= 1
        if not self._reads:
            for visit in self._written:
                self._unwritten.pop(visit, None)
            self._written.clear()

    def patch(
        self, chunk_of_row: np.ndarray, fine: np.ndarray, rows: Mapping[str, np.ndarray]
    ) -> int:
        """Apply stored Objects (new or changed) to the strips they fall in.

        Parameters
        ----------
        chunk_of_row, fine : ndarray
            The chunk and fine index of each row.
        rows : mapping of str to ndarray
            At least the cached columns; ``diaObjectId`` unique.

        Returns
        -------
        int
            The number of strips changed.
        """
        if not self._strips or not len(fine):
            return 0
        order = np.lexsort((rows[KEY_COLUMN], chunk_of_row))
        chunks = chunk_of_row[order]
        cuts = np.flatnonzero(np.r_[True, chunks[1:] != chunks[:-1], True])
        by_chunk = {int(chunks[a]): order[a:b] for a, b in pairwise(cuts.tolist())}
        changed = 0
        for key, strip in list(self._strips.items()):
            take = by_chunk.get(key[0])
            if take is None:
                continue
            take = take[strip.contains(fine[take])]
            if len(take):
                self._strips[key] = strip.upserted({k: rows[k][take] for k in strip.columns})
                changed += 1
        return changed
