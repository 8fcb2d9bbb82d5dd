"""Cross-match: each Slice finds every Object within the radius of its DIASources, with a cost."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from association.columns import MATCH_COLUMNS
from association.matching.assign import CostConfig, position_cost
from association.matching.assign import warm_up as assign_warm_up
from association.matching.zoneindex import ZoneIndex, warm_up
from association.sky.fov import match_radius_arcsec
from association.stages.load import margin_strips
from association.stages.rank import AssociationState
from association.stages.visit import Candidates, MasterVisit, SliceVisit
from framework.stage import ExecutionContext, MasterContext, RankContext, Stage


@dataclass(frozen=True)
class CrossMatchConfig:
    """The hard match radius and the position errors of the cost.

    The radius: see `association.sky.fov.match_radius_arcsec`. The errors:
    `association.matching.assign.CostConfig` (floor on the combined 1-sigma
    error per axis, and the error taken where one is missing).
    """

    default_radius_arcsec: float = 1.0
    seeing_factor: float = 1.0
    min_radius_arcsec: float = 0.5
    max_radius_arcsec: float = 3.0
    sigma_floor_arcsec: float = 0.05
    fallback_sigma_arcsec: float = 0.2


@dataclass
class SliceCandidates:
    """What a Slice found: the DIASources it was given, and their candidate pairs."""

    diaSourceId: np.ndarray
    candidates: Candidates


class CrossMatchStage(Stage):
    """Every Object within the match radius of every DIASource, with the pair's cost.

    Each Slice takes the DIASources of the chunks it owns (handed over by the
    sources stage) against its owned and margin chunks, so a DIASource near
    a chunk edge still finds its Objects. It returns all the pairs with their
    costs; the master gathers them, and decides nothing here: the moving
    stage takes the movers first, then the update stage pairs the rest with
    Objects. Every pair is found by exactly one Slice, with the same
    arithmetic on identical copies, so the gathered pairs do not depend on
    the number of Slices.
    """

    ConfigClass = CrossMatchConfig

    def setup(self, ctx: RankContext) -> None:
        if ctx.rank > 0:  # the Slices' kernels, loaded now rather than in the first visit
            warm_up()
            assign_warm_up()
        c = self.config
        self._costs = CostConfig(c.sigma_floor_arcsec, c.fallback_sigma_arcsec)
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

    def process(self, ctx: ExecutionContext, payload: float) -> SliceCandidates:
        st: AssociationState = ctx.shared
        visit: SliceVisit = ctx.state
        sources, radius = visit.sources, payload
        cat = st.catalogue
        assert cat is not None
        held = cat.columns(visit.held, MATCH_COLUMNS)
        strip = margin_strips(st, visit.owned, visit.strip_chunks, ctx.board)
        objects = {k: np.concatenate([held[k], strip[k]]) for k in MATCH_COLUMNS}
        found = Candidates()
        if len(sources) and len(objects["ra"]):
            index = ZoneIndex.build(
                objects["ra"], objects["dec"], objects["diaObjectId"], copy=False
            )
            s, o, d = index.pairs(sources["ra"], sources["dec"], radius)
            cost = position_cost(
                s,
                o,
                sources["ra"],
                sources["dec"],
                objects["ra"],
                objects["dec"],
                sources["raErr"],
                sources["decErr"],
                objects["raErr"],
                objects["decErr"],
                self._costs,
            )
            found = Candidates(
                sources["diaSourceId"][s],
                objects["diaObjectId"][o],
                cost,
                d,
                objects["isVariable"][o].astype(bool),
            )
        return SliceCandidates(sources["diaSourceId"].copy(), found)

    def postprocess(self, ctx: MasterContext, results: list[SliceCandidates]) -> None:
        visit: MasterVisit = ctx.state
        sources = visit.sources
        ids = np.sort(np.concatenate([r.diaSourceId for r in results]))
        if not np.array_equal(ids, sources["diaSourceId"]):
            raise RuntimeError(f"fov {ctx.key}: the Slices did not answer for every DIASource")
        visit.candidates = Candidates.gather([r.candidates for r in results])
        with_any = np.unique(visit.candidates.diaSourceId).size
        ctx.log.info(
            "fov %s: %d DIASources, %d with an Object within %.2f arcsec (%d pairs)",
            ctx.key,
            len(sources),
            with_any,
            visit.radius_arcsec,
            len(visit.candidates),
        )
