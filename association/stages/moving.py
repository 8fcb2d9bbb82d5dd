"""Moving objects: NightMOPS's predicted ellipses against the flagged DIASources."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from association.matching.ellipse import EllipseConfig, conclusive_matches, ellipse_pairs
from association.stages.visit import MasterVisit, MovingMatches
from framework.stage import MasterContext, Stage


@dataclass(frozen=True)
class MovingConfig:
    """Ellipse scaling: 1-sigma axes times `scale`, clamped to [min, max] arcsec."""

    scale: float = 3.0
    min_axis_arcsec: float = 0.5
    max_axis_arcsec: float = 60.0


class MovingStage(Stage):
    """NightMOPS's predictions against the flagged DIASources; conclusive matches are movers.

    A match is conclusive when a prediction's scaled ellipse holds exactly one
    flagged DIASource and that DIASource lies in no other ellipse. Such a
    DIASource becomes a moving-object match: it neither updates nor creates
    an Object; it raises an alert only under Rubin's schema, whose
    ``ssSource`` comes from the prediction kept with the match. The matching
    is small (hundreds of ellipses against the flagged sources) and runs on
    the master.
    """

    ConfigClass = MovingConfig

    def preprocess(self, ctx: MasterContext) -> None:
        visit: MasterVisit = ctx.state
        preds = visit.predictions
        if not len(preds):
            return None
        sources = visit.sources
        cand = np.flatnonzero(visit.flagged)
        c = self.config
        p_idx, s_idx = ellipse_pairs(
            preds["ra"],
            preds["dec"],
            preds["semiMajorAxis"],
            preds["semiMinorAxis"],
            preds["positionAngle"],
            sources["ra"][cand],
            sources["dec"][cand],
            EllipseConfig(c.scale, c.min_axis_arcsec, c.max_axis_arcsec),
        )
        p_idx, s_idx = conclusive_matches(p_idx, s_idx, len(preds), len(cand))
        rows = cand[s_idx]
        sources["ssObjectId"][rows] = preds["ssObjectId"][p_idx]
        sources["diaObjectId"][rows] = 0
        visit.moving = MovingMatches(
            preds["ssObjectId"][p_idx], sources["diaSourceId"][rows], preds[p_idx]
        )
        ctx.log.info(
            "fov %s: %d predictions, %d conclusive moving-object matches",
            ctx.key,
            len(preds),
            len(rows),
        )
        return None
