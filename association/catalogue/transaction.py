"""The update of one visit on a Slice's catalogue, and how it is undone.

A transaction saves, on first touch of a chunk, references to its buffers and
the original rows it updates in place; it never copies a whole chunk. Every
update is applied to every held copy of the chunks it touches, with arithmetic
that depends only on (chunk contents, update list) in canonical order
(diaObjectId, midpointMjdTai, diaSourceId), so copies held by different
Slices stay byte-identical.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from association import records as rec
from association.catalogue.stats import apply_detections, new_objects
from association.columns import DIASOURCE_DTYPE, OBJECT_DTYPE

if TYPE_CHECKING:
    from association.catalogue.catalogue import Catalogue


class ChunkConflict(RuntimeError):
    """A transaction touched a chunk that another open transaction has touched."""


@dataclass
class _Undo:
    """What restores one chunk: its buffers at first touch and rows before in-place updates."""

    state: tuple[Any, ...]
    saved: list[np.ndarray] = field(default_factory=list)


class Transaction:
    """The updates of one visit; see `Catalogue.begin`.

    Give a visit's matched DIASources to `associate` in one call: the float32
    statistics are rounded once per call. A transaction works on its
    catalogue's chunks, id lookup and claims directly.
    """

    def __init__(self, catalogue: Catalogue, visit: Hashable) -> None:
        self.visit = visit
        self._cat = catalogue
        self._open = True
        self._undo: dict[int, _Undo] = {}
        self._changed: dict[int, list[np.ndarray]] = {}
        self._created: list[np.ndarray] = []

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self._open:
            if exc_type is None:
                self.commit()
            else:
                self.rollback()

    @property
    def open(self) -> bool:
        """Whether neither `commit` nor `rollback` has been called."""
        return self._open

    def associate(self, sources: np.ndarray) -> int:
        """Apply DIASources to their Objects (``diaObjectId``) in every held chunk.

        Sources with diaObjectId 0 or whose Object is not held are ignored.
        Returns the number of sources applied.
        """
        self._check_open()
        src = _as_sources(sources)
        src = rec.take(src, src["diaObjectId"] != 0)
        if not len(src):
            return 0
        src = rec.take(src, rec.canonical(src))
        oid = src["diaObjectId"]
        starts = np.flatnonzero(np.r_[True, oid[1:] != oid[:-1]])
        counts = np.diff(np.r_[starts, len(oid)])
        uid = oid[starts]
        where = self._cat._index.locate(uid)
        held = where >= 0
        if not held.any():
            return 0
        src = rec.take(src, np.repeat(held, counts))
        uid, where, counts = uid[held], where[held], counts[held]
        self._touch(np.unique(where))

        rows = np.empty(len(uid), OBJECT_DTYPE)
        located = []
        for c, sel in rec.groups(where):
            ch = self._cat._chunks[c]
            idx = ch.rows_of(uid[sel])
            original = ch.rows_at(idx)
            rec.assign(rows, sel, original)
            self._undo[c].saved.append(original)
            located.append((c, ch, sel, idx))
        apply_detections(rows, np.r_[0, np.cumsum(counts)], src, self._cat.config.variability)
        by_chunk = rec.groups(np.repeat(where, counts))
        for (c, ch, sel, idx), (_, src_sel) in zip(located, by_chunk, strict=True):
            ch.write(idx, rec.take(rows, sel))
            ch.add_recent(rec.take(src, src_sel))
            self._changed.setdefault(c, []).append(uid[sel])
        return len(src)

    def create(self, sources: np.ndarray) -> int:
        """Create an Object from each DIASource whose ``fine`` falls in a held chunk.

        The Object's id is the diaSourceId; ``diaObjectId`` of the sources must
        be 0 or equal to it. Returns the number of Objects created here.
        """
        self._check_open()
        src = _as_sources(sources)
        if not len(src):
            return 0
        sid = src["diaSourceId"]
        oid = src["diaObjectId"]
        if np.any((oid != 0) & (oid != sid)):
            raise ValueError("create: diaObjectId must be 0 or the source's own diaSourceId")
        src = rec.take(src, np.argsort(sid, kind="stable"))
        sid = src["diaSourceId"]
        if np.any(sid[1:] == sid[:-1]):
            raise ValueError("create: duplicate diaSourceId")
        chunk_of = src["fine"] >> self._cat.chunk_shift
        held = np.isin(chunk_of, self._cat.held())
        src, sid, chunk_of = rec.take(src, held), sid[held], chunk_of[held]
        if not len(src):
            return 0
        if np.any(self._cat._index.locate(sid) >= 0):
            raise ValueError("create: an Object with that id already exists")
        self._touch(np.unique(chunk_of))

        rows = new_objects(src)
        recent = rec.copy(src)
        recent["diaObjectId"] = sid
        for c, sel in rec.groups(chunk_of):
            ch = self._cat._chunks[c]
            ch.insert_objects(rec.take(rows, sel))
            ch.add_recent(rec.take(recent, sel))
            self._changed.setdefault(c, []).append(sid[sel])
        self._cat._index.add(sid, chunk_of)
        self._created.append(sid)
        return len(src)

    def changed(self, chunks: Iterable[int] | None = None) -> np.ndarray:
        """Current rows of Objects created or updated here, sorted by id, optionally in ``chunks``."""
        wanted = None if chunks is None else {int(c) for c in chunks}
        parts = []
        for c, id_lists in sorted(self._changed.items()):
            if (wanted is not None and c not in wanted) or c not in self._cat._chunks:
                continue
            ch = self._cat._chunks[c]
            parts.append(ch.rows_at(ch.rows_of(np.unique(np.concatenate(id_lists)))))
        out = rec.concat(parts, OBJECT_DTYPE)
        return rec.take(out, np.argsort(out["diaObjectId"], kind="stable"))

    def commit(self) -> None:
        """Keep the changes and release the touched chunks."""
        self._check_open()
        self._close()
        self._cat._evict()

    def rollback(self) -> None:
        """Restore every touched chunk exactly as it was at its first touch."""
        self._check_open()
        if self._created:
            self._cat._index.remove(np.concatenate(self._created))
        for c, undo in self._undo.items():
            self._cat._chunks[c].restore(undo.state, undo.saved)
        self._changed.clear()
        self._close()

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"transaction of visit {self.visit!r} is closed")

    def _close(self) -> None:
        self._open = False
        for c in self._undo:
            self._cat._claims.pop(c, None)
        self._undo.clear()
        self._created.clear()
        self._cat._open.pop(self.visit, None)

    def _touch(self, chunks: np.ndarray) -> None:
        claims = self._cat._claims
        for c in chunks.tolist():
            other = claims.get(c)
            if other is not None and other is not self:
                raise ChunkConflict(
                    f"visit {self.visit!r} touches chunk {c}, held by open visit {other.visit!r}"
                )
        for c in chunks.tolist():
            if c not in self._undo:
                claims[c] = self
                self._undo[c] = _Undo(self._cat._chunks[c].state())


def _as_sources(sources: np.ndarray) -> np.ndarray:
    src = np.asarray(sources)
    if src.dtype != DIASOURCE_DTYPE:
        raise TypeError(f"expected DIASOURCE_DTYPE rows, got {src.dtype}")
    return src.ravel()
