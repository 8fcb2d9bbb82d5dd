"""Load: each Slice brings its part of the field of view into memory."""

from __future__ import annotations

import math
import resource
import time
from typing import Any

import numpy as np

from association.columns import DIASOURCE_DTYPE, MATCH_COLUMNS, OBJECT_DTYPE
from association.sky.fov import fov_of
from association.stages.rank import AssociationState
from association.stages.visit import LoadResult, MasterVisit, SliceVisit
from events.types import ALERTS_READY, NEXT_VISIT
from framework.stage import EndExecution, ExecutionContext, MasterContext, Scatter, Stage
from framework.status import Board


def rss_mb() -> float:
    """Peak resident memory of this process in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


SMALL_CHUNK = 4096
"""Chunks with fewer Objects are read together, in a few statements."""


def margin_strips(
    st: AssociationState, owned: np.ndarray, chunks: np.ndarray, board: Board
) -> dict[str, np.ndarray]:
    """Match columns of the thin strips of margin `chunks` along the `owned` chunks.

    From the Slice's strip cache; what it lacks is read in one go (its
    duration goes on `board` as ``db_read``) and cached. Of a chunk with fewer than `SMALL_CHUNK` Objects (an empty or
    sparse one) the whole chunk is kept as its strip: a superset of the
    strip costs nothing to match against, and one range reads faster than
    the strip's many. The cache holds every decided change, so the columns
    are current.
    """
    key = tuple(owned.tolist())
    cached = {c: st.strips.get(c, key) for c in chunks.tolist()}
    lacking = np.array([c for c, strip in cached.items() if strip is None], np.int64)
    if lacking.size:
        whole_lo, whole_hi = st.partition.chunk_range(lacking)
        dense = st.storage.count_objects(whole_lo, whole_hi, SMALL_CHUNK) >= SMALL_CHUNK
        strip_lo, strip_hi = st.partition.strip_ranges(lacking[dense], owned)
        lo = np.concatenate([whole_lo[~dense], strip_lo])
        hi = np.concatenate([whole_hi[~dense], strip_hi])
        t0 = time.perf_counter()
        found = st.storage.load_object_columns(lo, hi, (*MATCH_COLUMNS, "fine"))
        board.observe("db_read", time.perf_counter() - t0)
        found["isVariable"] = found["isVariable"].astype(bool)
        range_chunk = st.partition.chunk_of_fine(lo)
        row_chunk = st.partition.chunk_of_fine(found.pop("fine"))
        for chunk in lacking.tolist():
            mine, rows = range_chunk == chunk, row_chunk == chunk
            columns = {k: v[rows] for k, v in found.items()}
            cached[chunk] = st.strips.put(chunk, key, lo[mine], hi[mine], columns)
    strips = [cached[c].columns for c in chunks.tolist()]
    return {
        k: np.concatenate([s[k] for s in strips]) if strips else np.empty(0, OBJECT_DTYPE[k])
        for k in MATCH_COLUMNS
    }


def load_chunks(
    st: AssociationState, chunks: np.ndarray, keep: int, since: float = -math.inf
) -> int:
    """Read ``chunks`` into the Slice's catalogue; the Objects read.

    Of each Object, at most `keep` recent DIASources, none before MJD `since`.

    One probe statement counts each chunk's Objects (up to `SMALL_CHUNK`):
    an empty chunk is held empty at once, the Objects of the small ones are
    read together, a large one by itself; then the recent DIASources of each
    chunk that has Objects. So a field of many empty or sparse chunks costs
    a few statements and a short one per sparse chunk.
    """
    cat = st.catalogue
    assert cat is not None
    if not len(chunks):
        return 0
    lo, hi = st.partition.chunk_range(chunks)
    count = st.storage.count_objects(lo, hi, SMALL_CHUNK)
    small = np.flatnonzero((count > 0) & (count < SMALL_CHUNK))
    read = st.storage.load_objects_ranges(lo[small], hi[small])
    objects = dict(zip(small.tolist(), read, strict=True))
    loaded = 0
    for i, chunk in enumerate(chunks.tolist()):
        a, b = int(lo[i]), int(hi[i])
        found = np.empty(0, OBJECT_DTYPE)
        recent = np.empty(0, DIASOURCE_DTYPE)
        if count[i]:
            found = objects[i] if i in objects else st.storage.load_objects(a, b)
            recent = st.storage.load_recent_diasources(a, b, keep, since)
        cat.put(chunk, found, recent)
        loaded += len(found)
    return loaded


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

    def process(self, ctx: ExecutionContext, payload: tuple[np.ndarray, np.ndarray]) -> LoadResult:
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
        with st.storage.reading():
            t_read = time.perf_counter()
            loaded = load_chunks(st, missing, cat.config.recent_per_object, cat.recent_floor())
            ctx.board.observe("db_read", time.perf_counter() - t_read)
            n_strip = len(margin_strips(st, owned, strip_of, ctx.board)["ra"])
        visit.owned, visit.held, visit.strip_chunks = owned, need, strip_of
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
            st.catalogue.unpin(ctx.key)
