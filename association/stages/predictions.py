"""Predictions: NightMOPS's predicted moving-object positions for the visit."""

from __future__ import annotations

import numpy as np

from association.inputs.readers import PREDICTION_DTYPE, MissingInputError, read_predictions
from association.stages.rank import AssociationState
from association.stages.visit import MasterVisit
from events.types import PREDICTIONS_READY
from framework.stage import MasterContext, Stage


class PredictionsStage(Stage):
    """Waits for ``nightmops.predictions_ready`` (and goes on without it when it is late).

    Predictions are optional: no event, or a file that is missing, means no
    predictions, with a warning; a file that is there but bad fails the visit.
    """

    def preprocess(self, ctx: MasterContext) -> None:
        visit: MasterVisit = ctx.state
        st: AssociationState = ctx.shared
        ev = ctx.events.get(PREDICTIONS_READY)
        if ev is None:
            ctx.log.warning("fov %s: no predictions came; no moving-object matching", ctx.key)
            return
        parts = []
        for path in ev.body["paths"]:
            try:
                parts.append(read_predictions(st.roots.check(path, "predictions")))
            except MissingInputError as exc:
                ctx.log.warning("fov %s: %s; going on without its predictions", ctx.key, exc)
        visit.predictions = np.concatenate(parts) if parts else np.empty(0, PREDICTION_DTYPE)
