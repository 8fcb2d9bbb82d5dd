"""Moving objects first: NightMOPS's predictions against every DIASource of the visit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from association.matching.movers import MoverConfig, mover_candidates, mover_matches
from association.matching.movers import warm_up as movers_warm_up
from association.stages.visit import Candidates, MasterVisit, MovingMatches
from framework.stage import MasterContext, RankContext, Stage


@dataclass(frozen=True)
class MovingConfig:
    """How predictions meet DIASources (`association.matching.movers.MoverConfig`).

    ``scale``: the gate in sigmas (Mahalanobis distance); ``min_axis_arcsec``:
    least scaled semi-axis, and no largest; ``fallback_sigma_arcsec``: a
    DIASource's position error where it gives none; ``ambiguity_margin``: how
    much costlier the best pairing without a match must be for it to count.
    """

    scale: float = 3.0
    min_axis_arcsec: float = 0.5
    fallback_sigma_arcsec: float = 0.2
    ambiguity_margin: float = 1.0


def variable_object_cost(sources: np.ndarray, candidates: Candidates) -> np.ndarray:
    """Per DIASource, its least cost against a known variable Object; inf where none."""
    out = np.full(len(sources), np.inf)
    var = candidates.isVariable
    rows = np.searchsorted(sources["diaSourceId"], candidates.diaSourceId[var])
    np.minimum.at(out, rows, candidates.cost[var])
    return out


class MovingStage(Stage):
    """Movers first: conclusive moving-object matches leave Object association and alerting.

    Runs on the master, before any DIASource is paired with an Object. Every
    DIASource is tested against every prediction's error ellipse, with no cap
    on its size; predictions and DIASources are paired one-to-one by cost
    (`association.matching.movers`), and a pair counts when it is
    conclusive. A DIASource that a known variable Object explains at least as
    well as the prediction stays with the star. A matched DIASource raises no
    alert and neither updates nor creates an Object; ``MasterVisit.moving``
    keeps each match with the prediction row it matched.
    """

    ConfigClass = MovingConfig

    def setup(self, ctx: RankContext) -> None:
        c = self.config
        self._movers = MoverConfig(
            c.scale, c.min_axis_arcsec, c.fallback_sigma_arcsec, c.ambiguity_margin
        )
        if ctx.rank == 0:
            movers_warm_up()  # the master's first visit does not wait for its kernels

    def preprocess(self, ctx: MasterContext) -> None:
        visit: MasterVisit = ctx.state
        preds = visit.predictions
        if not len(preds):
            return None
        sources = visit.sources
        p, s, cost = mover_candidates(
            preds["ra"],
            preds["dec"],
            preds["semiMajorAxis"],
            preds["semiMinorAxis"],
            preds["positionAngle"],
            sources["ra"],
            sources["dec"],
            sources["raErr"],
            sources["decErr"],
            self._movers,
        )
        stars = variable_object_cost(sources, visit.candidates)
        p, s = mover_matches(p, s, cost, stars, self._movers)
        sources["ssObjectId"][s] = preds["ssObjectId"][p]
        sources["diaObjectId"][s] = 0
        visit.moving = MovingMatches(
            preds["ssObjectId"][p], sources["diaSourceId"][s], preds[p].copy()
        )
        ctx.log.info(
            "fov %s: %d predictions, %d conclusive moving-object matches",
            ctx.key,
            len(preds),
            len(s),
        )
        return None
