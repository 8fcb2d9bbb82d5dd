"""Cross-match: each Slice matches the new DIASources of its chunks to Objects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from association.columns import MATCH_COLUMNS
from association.matching.zoneindex import ZoneIndex, warm_up
from association.sky.fov import match_radius_arcsec
from association.stages.load import margin_strips
from association.stages.rank import AssociationState
from association.stages.visit import MasterVisit, SliceVisit
from framework.stage import ExecutionContext, MasterContext, RankContext, Stage


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


class CrossMatchStage(Stage):
    """Nearest Object within the match radius, for every DIASource of the visit.

    Each Slice matches the DIASources of the chunks it owns (handed over by
    the sources stage) against its owned and margin chunks, so a DIASource
    near a chunk edge still finds its Object. Ties in distance go to the
    smaller diaObjectId, so the result does not depend on the Slices.
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

    def preprocess(self, ctx: MasterContext) -> float:
        st: AssociationState = ctx.shared
        visit: MasterVisit = ctx.state
        c = self.config
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
        visit.radius_arcsec, visit.radius_from = r, why
        return r

    def process(self, ctx: ExecutionContext, payload: float) -> Matches:
        st: AssociationState = ctx.shared
        visit: SliceVisit = ctx.state
        sources, radius = visit.sources, payload
        cat = st.catalogue
        assert cat is not None
        held = cat.columns(visit.held, MATCH_COLUMNS)
        strip = margin_strips(st, visit.owned, visit.strip_chunks, ctx.board)
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
