"""Cross-match: each Slice matches the new DIASources of its chunks to Objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from association.columns import MATCH_COLUMNS
from association.inputs.readers import BadInputError, read_diasources
from association.matching.zoneindex import ZoneIndex, warm_up
from association.sky.fov import angular_distance_deg, fov_of, match_radius_arcsec
from association.stages.rank import AssociationState
from association.stages.visit import MasterVisit, SliceVisit
from events.types import DIASOURCES_READY, NEXT_VISIT
from framework.stage import ExecutionContext, MasterContext, RankContext, Scatter, Stage


@dataclass(frozen=True)
class CrossMatchConfig:
    """How the match radius is chosen (see `association.sky.fov.match_radius_arcsec`)."""

    default_radius_arcsec: float = 1.0
    seeing_factor: float = 1.0
    min_radius_arcsec: float = 0.5
    max_radius_arcsec: float = 3.0


@dataclass
class Matches:
    """A Slice's matches, one row per DIASource it was given."""

    diaSourceId: np.ndarray
    diaObjectId: np.ndarray  # 0: no Object within the radius
    isVariable: np.ndarray
    distance_arcsec: np.ndarray


def read_visit_sources(paths: list[str], visit: int, fine: Any) -> np.ndarray:
    """Read every DIASources file of a visit; ids must be unique across them."""
    parts = [read_diasources(p, visit, fine) for p in paths]
    sources = np.concatenate(parts)
    ids = sources["diaSourceId"]
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if dup.size:
        a, b = order[dup[0]], order[dup[0] + 1]
        ends = np.cumsum([len(p) for p in parts])
        fa, fb = (int(np.searchsorted(ends, x, side="right")) for x in (a, b))
        raise BadInputError(
            f"diaSourceId {int(ids[a])} appears again in '{paths[fb]}' row "
            f"{int(b - (ends[fb - 1] if fb else 0))}",
            path=paths[fa],
            column="diaSourceId",
            row=int(a - (ends[fa - 1] if fa else 0)),
            kind="diasources",
        )
    return sources[order]


def check_in_field(sources: np.ndarray, ra: float, dec: float, limit_deg: float, path: str) -> None:
    """Fail on a DIASource outside the visit's field of view."""
    if not len(sources):
        return
    d = angular_distance_deg(ra, dec, sources["ra"], sources["dec"])
    bad = np.flatnonzero(d > limit_deg)
    if bad.size:
        i = bad[0]
        raise BadInputError(
            f"diaSource {int(sources['diaSourceId'][i])} at ({sources['ra'][i]:.5f}, "
            f"{sources['dec'][i]:.5f}) is {d[i]:.3f} deg from the field centre, "
            f"outside the field of view ({limit_deg:.3f} deg)",
            path=path,
            column="ra",
            kind="diasources",
        )


class CrossMatchStage(Stage):
    """Waits for ``detection.diasources_ready``; nearest Object within the radius.

    The master reads and checks the files and gives each Slice the DIASources
    in the chunks it owns; a Slice searches its owned and margin chunks, so a
    DIASource near a chunk edge still finds its Object. Ties in distance go to
    the smaller diaObjectId, so the result does not depend on the Slices.
    """

    ConfigClass = CrossMatchConfig

    def setup(self, ctx: RankContext) -> None:
        warm_up()
        c = self.config
        margin_arcsec = ctx.settings.margin_arcsec
        if max(c.default_radius_arcsec, c.max_radius_arcsec) >= margin_arcsec:
            raise ValueError(
                f"crossmatch radius up to {c.max_radius_arcsec} arcsec must be below the load "
                f"margin ({margin_arcsec:g} arcsec)"
            )

    def preprocess(self, ctx: MasterContext) -> Scatter:
        st: AssociationState = ctx.shared
        visit: MasterVisit = ctx.state
        c = self.config
        paths = list(ctx.events[DIASOURCES_READY].body["paths"])
        sources = read_visit_sources(paths, ctx.key, st.partition.fine_index)
        ra, dec, radius = fov_of(ctx.events[NEXT_VISIT])
        check_in_field(sources, ra, dec, radius + 2 * st.margin_deg, paths[0])
        r, why = match_radius_arcsec(
            ctx.events,
            c.default_radius_arcsec,
            c.seeing_factor,
            c.min_radius_arcsec,
            c.max_radius_arcsec,
        )
        if r >= st.margin_deg * 3600:
            raise ValueError(
                f"match radius {r} arcsec (from the {why}) is not below the load margin "
                f"({st.margin_deg * 3600:g} arcsec)"
            )
        visit.sources = sources
        visit.radius_arcsec, visit.radius_from = r, why
        chunk = st.partition.chunk_of_fine(sources["fine"])
        chunks, owner = visit.chunks, visit.owner
        slot = np.searchsorted(chunks, chunk)
        slot = np.minimum(slot, len(chunks) - 1)
        if len(sources) and not np.array_equal(chunks[slot], chunk):
            raise RuntimeError(f"fov {ctx.key}: a DIASource lies outside the loaded chunks")
        which = owner[slot] if len(sources) else np.empty(0, np.int64)
        return Scatter([(sources[which == i], r) for i in range(ctx.n_slices)])

    def process(self, ctx: ExecutionContext, payload: tuple[np.ndarray, float]) -> Matches:
        st: AssociationState = ctx.shared
        visit: SliceVisit = ctx.state
        sources, radius = payload
        cat = st.catalogue
        assert cat is not None
        held = cat.columns(visit.held, MATCH_COLUMNS)
        strip = visit.strip
        objects = {k: np.concatenate([held[k], strip[k]]) for k in MATCH_COLUMNS}
        n = len(sources)
        obj_id = np.zeros(n, np.int64)
        var = np.zeros(n, bool)
        dist = np.full(n, np.nan)
        if n and len(objects["ra"]):
            index = ZoneIndex.build(
                objects["ra"], objects["dec"], objects["diaObjectId"], copy=False
            )
            row, d = index.nearest(sources["ra"], sources["dec"], radius)
            hit = row >= 0
            obj_id[hit] = objects["diaObjectId"][row[hit]]
            var[hit] = objects["isVariable"][row[hit]]
            dist[hit] = d[hit]
        return Matches(sources["diaSourceId"].copy(), obj_id, var, dist)

    def postprocess(self, ctx: MasterContext, results: list[Matches]) -> None:
        visit: MasterVisit = ctx.state
        sources = visit.sources
        ids = np.concatenate([m.diaSourceId for m in results])
        order = np.argsort(ids)
        if not np.array_equal(ids[order], sources["diaSourceId"]):
            raise RuntimeError(f"fov {ctx.key}: the Slices did not answer for every DIASource")
        sources["diaObjectId"] = np.concatenate([m.diaObjectId for m in results])[order]
        matched_variable = np.concatenate([m.isVariable for m in results])[order]
        # flagged: no known variable Object explains it; a candidate mover
        visit.flagged = ~matched_variable
        ctx.log.info(
            "fov %s: %d DIASources, %d matched (radius %.2f arcsec), %d flagged",
            ctx.key,
            len(sources),
            int((sources["diaObjectId"] > 0).sum()),
            visit.radius_arcsec,
            int((~matched_variable).sum()),
        )
