"""Share: the visit's changes are decided, on every Slice, before the next visit may read them."""

from __future__ import annotations

import numpy as np

from association.columns import MATCH_COLUMNS
from association.stages.rank import AssociationState
from association.stages.visit import MasterVisit, SliceVisit
from framework.stage import ExecutionContext, MasterContext, Stage

SHARED_COLUMNS = (*MATCH_COLUMNS, "fine")
"""What a Slice's margin strips need of a changed Object."""


class ShareStage(Stage):
    """The last stage of the ordered section: the visit's catalogue changes become final.

    Every Slice commits the visit's catalogue transaction and applies the
    changed Objects to its cached margin strips (keeping them aside until the
    visit is written, for strips read from the database meanwhile). From here
    on, a later visit builds on this one; the database write follows in the
    store stage, outside the section.
    """

    def preprocess(self, ctx: MasterContext) -> dict[str, np.ndarray]:
        visit: MasterVisit = ctx.state
        return {name: visit.objects[name] for name in SHARED_COLUMNS}

    def postprocess(self, ctx: MasterContext, results: list[None]) -> None:
        visit: MasterVisit = ctx.state
        visit.decided = True

    def process(self, ctx: ExecutionContext, payload: dict[str, np.ndarray]) -> None:
        st: AssociationState = ctx.shared
        visit: SliceVisit = ctx.state
        if visit.txn is not None and visit.txn.open:
            visit.txn.commit()
        fine = payload["fine"]
        st.strips.decided(ctx.key, st.partition.chunk_of_fine(fine), fine, payload)
