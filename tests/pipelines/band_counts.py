"""A toy stage added to the association pipeline through its TOML alone."""

from __future__ import annotations

import numpy as np

from association.columns import BANDS
from association.stages.visit import MasterVisit
from framework.stage import MasterContext, Stage


class BandCounts(Stage):
    """Counts the visit's DIASources per band into the visit's outcome."""

    def preprocess(self, ctx: MasterContext) -> None:
        visit: MasterVisit = ctx.state
        bands, n = np.unique(visit.sources["band"], return_counts=True)
        ctx.counts.update({f"band_{BANDS[b]}": int(c) for b, c in zip(bands, n, strict=True)})
