"""Sources: the visit's new DIASources, read, checked and handed to the Slices that own them."""

from __future__ import annotations

from typing import Any

import numpy as np

from association.inputs.readers import BadInputError, read_diasources
from association.sky.fov import angular_distance_deg, fov_of
from association.stages.rank import AssociationState
from association.stages.visit import MasterVisit, SliceVisit
from events.types import DIASOURCES_READY, NEXT_VISIT
from framework.stage import ExecutionContext, MasterContext, Scatter, Stage


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


class SourcesStage(Stage):
    """Waits for ``detection.diasources_ready``: reads and checks the DIASource files.

    Each Slice gets the DIASources of the chunks it owns and keeps them for the
    cross-match. A bad file fails the visit here, before it has touched the
    catalogue; the message names the file, the column and the row.
    """

    def preprocess(self, ctx: MasterContext) -> Scatter:
        st: AssociationState = ctx.shared
        visit: MasterVisit = ctx.state
        paths = [
            str(st.roots.check(p, "diasources")) for p in ctx.events[DIASOURCES_READY].body["paths"]
        ]
        sources = read_visit_sources(paths, ctx.key, st.partition.fine_index)
        ra, dec, radius = fov_of(ctx.events[NEXT_VISIT])
        check_in_field(sources, ra, dec, radius + 2 * st.margin_deg, paths[0])
        visit.sources = sources
        chunk = st.partition.chunk_of_fine(sources["fine"])
        chunks, owner = visit.chunks, visit.owner
        slot = np.minimum(np.searchsorted(chunks, chunk), len(chunks) - 1)
        if len(sources) and not np.array_equal(chunks[slot], chunk):
            raise RuntimeError(f"fov {ctx.key}: a DIASource lies outside the loaded chunks")
        which = owner[slot] if len(sources) else np.empty(0, np.int64)
        return Scatter([sources[which == i] for i in range(ctx.n_slices)])

    def process(self, ctx: ExecutionContext, payload: Any) -> None:
        visit: SliceVisit = ctx.state
        visit.sources = payload
