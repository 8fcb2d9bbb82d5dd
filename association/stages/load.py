"""Load: each Slice brings its part of the field of view into memory."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from association.catalogue.strips import Strip
from association.columns import DIASOURCE_DTYPE, MATCH_COLUMNS, OBJECT_DTYPE
from association.sky.fov import fov_of
from association.sky.partition import Partition
from association.stages.rank import AssociationState
from association.stages.visit import LoadResult, MasterVisit, SliceVisit
from association.storage import Storage
from events.types import ALERTS_READY, NEXT_VISIT
from framework.stage import (
    Background,
    EndExecution,
    ExecutionContext,
    MasterContext,
    Scatter,
    Stage,
)
from framework.status import Board


def rss_mb() -> float:
    """Peak resident memory of this process in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


SMALL_CHUNK = 4096
"""Chunks with fewer Objects are read together, in a few statements."""


@dataclass(frozen=True)
class StripRead:
    """Match columns read for margin strips: the fine ranges, and the rows in them.

    ``chunks`` are the margin chunks read, ``lo`` and ``hi`` the fine-index
    ranges, ``columns`` the `MATCH_COLUMNS` of every Object in them and
    ``fine`` theirs.
    """

    chunks: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    columns: dict[str, np.ndarray]
    fine: np.ndarray


def read_strips(
    storage: Storage, partition: Partition, owned: np.ndarray, chunks: np.ndarray
) -> StripRead:
    """Read the thin strips of margin `chunks` along the `owned` chunks from the database.

    Of a chunk with fewer than `SMALL_CHUNK` Objects (an empty or sparse
    one) the whole chunk is read as its strip: a superset of the strip costs
    nothing to match against, and one range reads faster than the strip's
    many.
    """
    if not len(chunks):
        empty = np.empty(0, np.int64)
        columns = {k: np.empty(0, OBJECT_DTYPE[k]) for k in MATCH_COLUMNS}
        return StripRead(empty, empty, empty, columns, empty)
    whole_lo, whole_hi = partition.chunk_range(chunks)
    dense = storage.count_objects(whole_lo, whole_hi, SMALL_CHUNK) >= SMALL_CHUNK
    strip_lo, strip_hi = partition.strip_ranges(chunks[dense], owned)
    lo = np.concatenate([whole_lo[~dense], strip_lo])
    hi = np.concatenate([whole_hi[~dense], strip_hi])
    found = storage.load_object_columns(lo, hi, (*MATCH_COLUMNS, "fine"))
    found["isVariable"] = found["isVariable"].astype(bool)
    fine = found.pop("fine")
    return StripRead(chunks, lo, hi, found, fine)


def keep_strips(st: AssociationState, owned: tuple[int, ...], read: StripRead) -> dict[int, Strip]:
    """Put the strips of `read` in the Slice's strip cache; return them by chunk."""
    range_chunk = st.partition.chunk_of_fine(read.lo)
    row_chunk = st.partition.chunk_of_fine(read.fine)
    kept = {}
    for chunk in read.chunks.tolist():
        mine, rows = range_chunk == chunk, row_chunk == chunk
        columns = {k: v[rows] for k, v in read.columns.items()}
        kept[chunk] = st.strips.put(chunk, owned, read.lo[mine], read.hi[mine], columns)
    return kept


def margin_strips(
    st: AssociationState, owned: np.ndarray, chunks: np.ndarray, board: Board
) -> dict[str, np.ndarray]:
    """Match columns of the thin strips of margin `chunks` along the `owned` chunks.

    From the Slice's strip cache; what it lacks is read (`read_strips`; its
    duration goes on `board` as ``db_read``) and cached. The cache holds
    every decided change, so the columns are current.
    """
    key = tuple(owned.tolist())
    cached = {c: st.strips.get(c, key) for c in chunks.tolist()}
    lacking = np.array([c for c, strip in cached.items() if strip is None], np.int64)
    if lacking.size:
        t0 = time.perf_counter()
        cached.update(keep_strips(st, key, read_strips(st.storage, st.partition, owned, lacking)))
        board.observe("db_read", time.perf_counter() - t0)
    strips = [cached[c] for c in chunks.tolist()]  # every one is cached by now
    return {
        k: np.concatenate([s.columns[k] for s in strips])
        if strips
        else np.empty(0, OBJECT_DTYPE[k])
        for k in MATCH_COLUMNS
    }


ChunkRead = tuple[int, np.ndarray, np.ndarray]
"""A chunk read from the database: its id, its Objects and their recent DIASources."""


def read_chunks(
    storage: Storage, partition: Partition, chunks: np.ndarray, keep: int, since: float
) -> list[ChunkRead]:
    """Read ``chunks`` from the database: of each Object at most `keep` recent DIASources, none before MJD `since`.

    One probe statement counts each chunk's Objects (up to `SMALL_CHUNK`):
    an empty chunk is read as empty at once, the Objects of the small ones
    are read together, a large one by itself; then the recent DIASources of
    each chunk that has Objects. So a field of many empty or sparse chunks
    costs a few statements and a short one per sparse chunk.
    """
    if not len(chunks):
        return []
    lo, hi = partition.chunk_range(chunks)
    count = storage.count_objects(lo, hi, SMALL_CHUNK)
    small = np.flatnonzero((count > 0) & (count < SMALL_CHUNK))
    read = storage.load_objects_ranges(lo[small], hi[small])
    objects = dict(zip(small.tolist(), read, strict=True))
    out = []
    for i, chunk in enumerate(chunks.tolist()):
        a, b = int(lo[i]), int(hi[i])
        found = np.empty(0, OBJECT_DTYPE)
        recent = np.empty(0, DIASOURCE_DTYPE)
        if count[i]:
            found = objects[i] if i in objects else storage.load_objects(a, b)
            recent = storage.load_recent_diasources(a, b, keep, since)
        out.append((chunk, found, recent))
    return out


@dataclass(frozen=True)
class LoadRead:
    """What a Slice's Load read in the background, and how long it took (s)."""

    chunks: list[ChunkRead]
    strips: StripRead
    seconds: float


class LoadStage(Stage):
    """Triggered by ``telescope.next_visit``: load Objects and recent DIASources.

    A visit an earlier run already stored ends here, as done: its
    ``association.alerts_ready`` is published again from the stored record.
    Otherwise the master splits the field's chunks between the Slices by the
    partition's fixed rule; each Slice loads its chunks plus a read-only
    margin of neighbours, skipping what it already holds, and pins them until
    the visit ends. Of the recent DIASources it loads only those within the
    recent-history window of the visits in flight (``settings.recent_days``).
    """

    def preprocess(self, ctx: MasterContext) -> Any:
        st: AssociationState = ctx.shared
        visit: MasterVisit = ctx.state
        if st.storage.visit_stored(ctx.key):
            self._announce_stored(ctx)
            return EndExecution("already stored by an earlier run; not computed again")
        ra, dec, radius = fov_of(ctx.events[NEXT_VISIT])
        chunks = st.partition.fov_chunks(ra, dec, radius + 2 * st.margin_deg)
        owner = st.partition.owner(chunks, ctx.n_slices)
        visit.chunks, visit.owner = chunks, owner
        items = []
        for i in range(ctx.n_slices):
            owned = chunks[owner == i]
            items.append((owned, st.partition.margin_chunks(owned, st.margin_deg)))
        return Scatter(items)

    def _announce_stored(self, ctx: MasterContext) -> None:
        st: AssociationState = ctx.shared
        row = st.storage.visit_record(ctx.key)
        assert row is not None
        path = ctx.settings.alerts_path(ctx.run_dir, ctx.key)
        body = {
            "path": str(path),
            "n_alerts": row.n_alerts,
            "n_sources": row.n_sources,
            "n_new_objects": row.n_new_objects,
            "n_moving": row.n_moving,
        }
        ctx.emit(ALERTS_READY, body)

    def process(self, ctx: ExecutionContext, payload: tuple[np.ndarray, np.ndarray]) -> Background:
        """Pin the field's chunks; read what is not held in the background.

        The database read goes on beside the Slice's other visits. A chunk an
        earlier visit's load is reading is not read again: that load's `then`
        runs first and puts it in the catalogue. The strip cache keeps the
        decided Objects of visits written during the read (`StripCache.read_started`).
        """
        st: AssociationState = ctx.shared
        visit: SliceVisit = ctx.state
        cat = st.catalogue
        assert cat is not None
        owned, margin = payload
        t0 = time.perf_counter()
        # Owned chunks are held whole; of a margin chunk not held already, only
        # the strip along the owned chunks is read, for this visit's matching.
        strip_of = margin[~np.isin(margin, cat.held())]
        need = np.union1d(owned, np.setdiff1d(margin, strip_of))
        cat.pin(ctx.key, need, float(ctx.events[NEXT_VISIT].body["mjd"]))
        missing = cat.missing(need)
        reading = missing[~np.isin(missing, np.fromiter(st.loading, np.int64))]
        st.loading.update(reading.tolist())
        key = tuple(owned.tolist())
        lacking = np.array(
            [c for c in strip_of.tolist() if st.strips.get(c, key) is None], np.int64
        )
        st.strips.read_started()
        visit.owned, visit.held, visit.strip_chunks = owned, need, strip_of
        visit.reading, visit.reading_strips = reading, True
        keep, since = cat.config.recent_per_object, cat.recent_floor()
        storage, partition = st.storage, st.partition

        def read() -> LoadRead:
            t_read = time.perf_counter()
            with storage.reading():
                chunks = read_chunks(storage, partition, reading, keep, since)
                strips = read_strips(storage, partition, owned, lacking)
            return LoadRead(chunks, strips, time.perf_counter() - t_read)

        def then(done: LoadRead) -> LoadResult:
            cat.put_all(done.chunks)
            keep_strips(st, key, done.strips)
            self._reads_over(st, visit)
            ctx.board.observe("db_read", done.seconds)
            loaded = sum(len(objects) for _, objects, _ in done.chunks)
            late = cat.missing(need)  # an earlier visit's load that was to read them failed
            if len(late):
                with storage.reading():
                    reads = read_chunks(storage, partition, late, keep, since)
                cat.put_all(reads)
                loaded += sum(len(objects) for _, objects, _ in reads)
            n_strip = len(margin_strips(st, owned, strip_of, ctx.board)["ra"])
            stats = cat.stats()
            ctx.board.set(
                catalogue_objects=stats["n_objects"],
                catalogue_mb=cat.nbytes / 1e6,
                bytes_per_object=cat.bytes_per_object(),
                evictions=stats["evictions"],
            )
            return LoadResult(
                chunks_loaded=len(missing),
                chunks_cached=len(need) - len(missing),
                objects_loaded=loaded + n_strip,
                objects_held=int(sum(cat.chunk(int(c)).n_objects for c in need)),
                seconds=time.perf_counter() - t0,
                rss_mb=rss_mb(),
            )

        return Background(read, then)

    @staticmethod
    def _reads_over(st: AssociationState, visit: SliceVisit) -> None:
        """The visit's background read is over, put or failed."""
        st.loading.difference_update(visit.reading.tolist())
        visit.reading = visit.reading[:0]
        if visit.reading_strips:
            visit.reading_strips = False
            st.strips.read_ended()

    def postprocess(self, ctx: MasterContext, results: list[LoadResult]) -> None:
        visit: MasterVisit = ctx.state
        visit.load = results
        ctx.log.info(
            "fov %s: loaded %d chunk(s) (%d objects), %d cached",
            ctx.key,
            sum(r.chunks_loaded for r in results),
            sum(r.objects_loaded for r in results),
            sum(r.chunks_cached for r in results),
        )

    def finish(self, ctx: ExecutionContext, ok: bool) -> None:
        if ctx.rank > 0:
            st: AssociationState = ctx.shared
            assert st.catalogue is not None
            self._reads_over(st, ctx.state)
            st.catalogue.unpin(ctx.key)
