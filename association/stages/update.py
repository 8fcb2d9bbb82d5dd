"""Update: the master pairs DIASources with Objects; every Slice applies that to its chunks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from association.matching.assign import assign, nearest
from association.matching.assign import warm_up as assign_warm_up
from association.stages.rank import AssociationState
from association.stages.visit import Candidates, MasterVisit, SliceVisit
from framework.stage import ExecutionContext, MasterContext, RankContext, Stage

RULES = ("one_to_one", "nearest")
"""The association rules `UpdateConfig.rule` may name."""


@dataclass(frozen=True)
class UpdateConfig:
    """How DIASources are paired with Objects.

    ``rule``: ``one_to_one`` (each DIASource at most one Object and each
    Object at most one DIASource of the visit, as many pairs as possible, then
    the least total cost) or ``nearest`` (each DIASource its nearest Object,
    whoever else takes it).
    """

    rule: str = "one_to_one"


def choose_objects(candidates: Candidates, movers: np.ndarray, rule: str) -> Candidates:
    """The chosen (DIASource, Object) pairs of a visit, movers left out.

    Decided once, on the master, over the candidates of all the Slices:
    ties go by diaSourceId and diaObjectId, so the pairs do not depend on
    the Slices or on the order the candidates came in.
    """
    cand = candidates.take(~np.isin(candidates.diaSourceId, movers))
    if rule == "one_to_one":
        chosen = assign(cand.diaSourceId, cand.diaObjectId, cand.cost)
    else:
        chosen = nearest(cand.diaSourceId, cand.diaObjectId, cand.distance_arcsec)
    return cand.take(chosen)


@dataclass
class Changes:
    """A Slice's changed Objects in the chunks it owns, and their recent DIASources."""

    objects: np.ndarray
    recent: np.ndarray


class UpdateStage(Stage):
    """DIASources are paired with Objects; matched Objects are updated, the rest make new ones.

    The master decides, after the movers, by `UpdateConfig.rule` over the
    candidates the cross-match gathered: a DIASource (not a mover) that pairs
    with no Object makes a new one, whose diaObjectId is its diaSourceId.
    It sends the same update list to every Slice, and each applies it
    to every copy it holds (owned or margin), with the same arithmetic, so
    the copies stay identical. Each Slice returns the rows of the Objects it
    owns, so every changed Object is stored once. The changes stay in an open
    transaction on each Slice until the share stage commits them; a visit
    that fails before then is rolled back.
    """

    ConfigClass = UpdateConfig

    def setup(self, ctx: RankContext) -> None:
        if self.config.rule not in RULES:
            raise ValueError(f"update.rule must be one of {RULES}, got {self.config.rule!r}")
        if ctx.rank == 0:
            assign_warm_up()  # the master's first visit does not wait for its kernels

    def preprocess(self, ctx: MasterContext) -> tuple[np.ndarray, np.ndarray]:
        visit: MasterVisit = ctx.state
        sources = visit.sources
        pairs = choose_objects(visit.candidates, visit.moving.diaSourceId, self.config.rule)
        rows = np.searchsorted(sources["diaSourceId"], pairs.diaSourceId)
        sources["diaObjectId"][rows] = pairs.diaObjectId
        moving = sources["ssObjectId"] != 0
        matched = (sources["diaObjectId"] != 0) & ~moving
        new = (sources["diaObjectId"] == 0) & ~moving
        visit.n_new = int(new.sum())
        return sources[matched], sources[new]

    def process(self, ctx: ExecutionContext, payload: tuple[np.ndarray, np.ndarray]) -> Changes:
        st: AssociationState = ctx.shared
        visit: SliceVisit = ctx.state
        matched, new = payload
        cat = st.catalogue
        assert cat is not None
        txn = visit.txn = cat.begin(ctx.key)
        txn.associate(matched)
        txn.create(new)
        changed = txn.changed(visit.owned)
        recent = cat.recent_for(changed["diaObjectId"], cat.window_start(ctx.key))
        return Changes(changed, recent[recent["visit"] != ctx.key])

    def postprocess(self, ctx: MasterContext, results: list[Changes]) -> None:
        visit: MasterVisit = ctx.state
        objects = np.concatenate([r.objects for r in results])
        recent = np.concatenate([r.recent for r in results])
        objects = objects[np.argsort(objects["diaObjectId"], kind="stable")]
        ids = objects["diaObjectId"]
        if np.any(ids[1:] == ids[:-1]):
            raise RuntimeError(f"fov {ctx.key}: an Object was returned by two Slices")
        sources = visit.sources
        new = (sources["diaObjectId"] == 0) & (sources["ssObjectId"] == 0)
        sources["diaObjectId"][new] = sources["diaSourceId"][new]
        wanted = sources["diaObjectId"][sources["ssObjectId"] == 0]
        at = np.minimum(np.searchsorted(ids, wanted), max(len(ids) - 1, 0))
        missing = wanted if not len(ids) else wanted[ids[at] != wanted]
        if missing.size:
            missing = np.unique(missing)
            raise RuntimeError(
                f"fov {ctx.key}: {missing.size} Object(s) not held by any Slice, e.g. {missing[0]}"
            )
        visit.objects = objects
        # Each Slice's part is in (diaObjectId, time) order and holds Objects no
        # other part holds: a stable sort by diaObjectId alone keeps each in time order.
        visit.recent = recent[np.argsort(recent["diaObjectId"], kind="stable")]

    def finish(self, ctx: ExecutionContext, ok: bool) -> None:
        """A visit that ends before its changes are decided (share) leaves no trace."""
        txn = ctx.state.txn if isinstance(ctx.state, SliceVisit) else None
        if txn is not None and txn.open:
            txn.rollback()
            ctx.log.info("fov %s: catalogue changes rolled back", ctx.key)
