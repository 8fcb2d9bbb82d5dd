"""Load: each Slice brings its part of the field of view into memory."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from association.catalogue.memory import CatalogueConfig, warm_up
from association.columns import OBJECT_DTYPE
from association.sky.fov import fov_of
from association.stages.rank import new_state, state_of
from events.types import NEXT_VISIT
from framework.stage import ExecutionContext, MasterContext, RankContext, Scatter, Stage

MATCH_COLUMNS = ("ra", "dec", "diaObjectId", "isVariable")
"""The Object columns the cross-match reads."""


@dataclass(frozen=True)
class LoadConfig:
    """Settings of the catalogue and the database, for the whole pipeline.

    Parameters
    ----------
    db_url : str
        SQLAlchemy URL; empty for SQLite in the run directory.
    chunk_order, fine_order : int
        HEALPix orders of the chunks and of the fine index.
    margin_arcsec : float
        Read-only margin around a Slice's chunks; wider than any match radius.
    catalogue_mb : float
        Memory budget of each Slice's catalogue (least recently used chunks go).
    recent_per_object : int
        Recent DIASources kept per Object.
    variable_min_sources : int
        An Object is variable once it has this many DIASources.
    """

    db_url: str = ""
    chunk_order: int = 6
    fine_order: int = 20
    margin_arcsec: float = 30.0
    catalogue_mb: float = 4096.0
    recent_per_object: int = 10
    variable_min_sources: int = 2


@dataclass
class LoadResult:
    """What one Slice did for a visit's Load."""

    chunks_loaded: int
    chunks_cached: int
    objects_loaded: int
    objects_held: int
    seconds: float
    rss_mb: float


def rss_mb() -> float:
    """Peak resident memory of this process in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class LoadStage(Stage):
    """Triggered by ``telescope.next_visit``: load Objects and recent DIASources.

    The master splits the field's chunks between the Slices by the
    partition's fixed rule; each Slice loads its chunks plus a read-only
    margin of neighbours, skipping what it already holds, and pins them until
    the visit ends.
    """

    ConfigClass = LoadConfig

    def setup(self, ctx: RankContext) -> None:
        c = self.config
        cat = None
        if ctx.rank > 0:
            cat = CatalogueConfig(c.catalogue_mb, c.recent_per_object, c.variable_min_sources)
            # The Slices share the cores: each runs its compiled kernels on its share.
            numba.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.n_slices))
            warm_up()
        st = new_state(
            ctx,
            db_url=c.db_url,
            chunk_order=c.chunk_order,
            fine_order=c.fine_order,
            margin_deg=c.margin_arcsec / 3600.0,
            catalogue=cat,
        )
        if ctx.rank == 0:
            st.create_schema()

    def preprocess(self, ctx: MasterContext) -> Any:
        st = state_of(ctx)
        ra, dec, radius = fov_of(ctx.events[NEXT_VISIT])
        ctx.clipboard["stored"] = st.storage.visit_stored(ctx.key)
        if ctx.clipboard["stored"]:
            ctx.log.info("fov %s: already stored by an earlier run; not computed again", ctx.key)
        chunks = st.partition.fov_chunks(ra, dec, radius + 2 * st.margin_deg)
        owner = st.partition.owner(chunks, ctx.n_slices)
        ctx.clipboard["chunks"] = chunks
        ctx.clipboard["owner"] = owner
        items = []
        for i in range(ctx.n_slices):
            owned = chunks[owner == i]
            items.append((owned, st.partition.margin_chunks(owned, st.margin_deg)))
        return Scatter(items)

    def process(self, ctx: ExecutionContext, payload: tuple[np.ndarray, np.ndarray]) -> LoadResult:
        st = state_of(ctx)
        cat = st.catalogue
        assert cat is not None
        owned, margin = payload
        t0 = time.perf_counter()
        # Owned chunks are held whole; of a margin chunk not held already, only
        # the strip along the owned chunks is read, for this visit's matching.
        strip_of = margin[~np.isin(margin, cat.held())]
        need = np.union1d(owned, np.setdiff1d(margin, strip_of))
        cat.pin(ctx.key, need)
        missing = cat.missing(need)
        loaded = 0
        keep = cat.config.recent_per_object
        for chunk in missing:
            lo, hi = st.partition.chunk_range(int(chunk))
            objects = st.storage.load_objects(int(lo), int(hi))
            recent = st.storage.load_recent_diasources(int(lo), int(hi), keep)
            cat.put(int(chunk), objects, recent)
            loaded += len(objects)
        key = tuple(owned.tolist())
        strips = []
        for chunk in strip_of.tolist():
            strip = st.strips.get(chunk, key)
            if strip is None:
                lo, hi = st.partition.strip_ranges(np.array([chunk]), owned)
                columns = st.storage.load_object_columns(lo, hi, MATCH_COLUMNS)
                columns["isVariable"] = columns["isVariable"].astype(bool)
                strip = st.strips.put(chunk, key, lo, hi, columns)
            strips.append(strip.columns)
        ctx.clipboard["strip"] = {
            k: np.concatenate([s[k] for s in strips]) if strips else np.empty(0, OBJECT_DTYPE[k])
            for k in MATCH_COLUMNS
        }
        ctx.clipboard["owned"] = owned
        ctx.clipboard["held"] = need
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
            objects_loaded=loaded + len(ctx.clipboard["strip"]["ra"]),
            objects_held=int(sum(cat.chunk(int(c)).n_objects for c in need)),
            seconds=time.perf_counter() - t0,
            rss_mb=rss_mb(),
        )

    def postprocess(self, ctx: MasterContext, results: list[LoadResult]) -> None:
        ctx.clipboard["load"] = results
        ctx.log.info(
            "fov %s: loaded %d chunk(s) (%d objects), %d cached",
            ctx.key,
            sum(r.chunks_loaded for r in results),
            sum(r.objects_loaded for r in results),
            sum(r.chunks_cached for r in results),
        )

    def finish(self, ctx: ExecutionContext, ok: bool) -> None:
        if ctx.rank > 0:
            cat = state_of(ctx).catalogue
            assert cat is not None
            cat.unpin(ctx.key)

    def shutdown(self, ctx: RankContext) -> None:
        state_of(ctx).close()
