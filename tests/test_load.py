"""The load stage on a big field: 47 deg^2 of empty or sparse sky in a few statements."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from association.catalogue import Catalogue, CatalogueConfig
from association.columns import DIASOURCE_DTYPE, MATCH_COLUMNS, OBJECT_DTYPE
from association.inputs.roots import DataRoots
from association.sky.partition import Partition
from association.stages.load import LoadStage
from association.stages.rank import AssociationState
from association.stages.visit import MasterVisit, SliceVisit
from association.storage import SqliteStorage, open_storage
from events.envelope import Event
from framework.stage import ExecutionContext, MasterContext
from framework.status import Board
from tests.databases import PARAMS
from tests.oracles.reference import offset
from tests.rules_night import BIG_RADIUS_DEG

CENTRE = (150.0, 2.0)
PARTITION = Partition(PARAMS.chunk_order, PARAMS.fine_order)


class CountingStorage(SqliteStorage):
    """The SQLite storage, counting the statements its reads run."""

    statements = 0

    def _fetch_columns(self, sql, params, kinds, presize):
        CountingStorage.statements += 1 + presize
        return super()._fetch_columns(sql, params, kinds, presize)


def sky(tmp_path: Path, per_deg2: float) -> Path:
    """A database of Objects (one past DIASource each) over the big field and its margin."""
    run = tmp_path / f"sky{per_deg2:g}"
    with open_storage(None, run, PARAMS, create=True) as storage:
        rng = np.random.default_rng(3)
        reach = np.radians(BIG_RADIUS_DEG + 1.0)
        n = int(per_deg2 * np.pi * np.degrees(reach) ** 2)
        r, t = reach * np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n)
        ra, dec = offset(*CENTRE, r * np.sin(t), r * np.cos(t))
        objects = np.zeros(n, OBJECT_DTYPE)
        objects["diaObjectId"] = np.arange(1, n + 1)
        objects["ra"], objects["dec"] = ra, dec
        objects["fine"] = PARTITION.fine_index(ra, dec)
        objects["nDiaSources"] = 1
        objects["raErr"] = objects["decErr"] = 1e-5
        history = np.zeros(n, DIASOURCE_DTYPE)
        for name in ("ra", "dec", "fine"):
            history[name] = objects[name]
        history["diaSourceId"] = history["diaObjectId"] = objects["diaObjectId"]
        history["visit"], history["midpointMjdTai"], history["psfFluxErr"] = -1, 60000.0, 1.0
        storage.bulk_load_objects(objects)
        storage.bulk_load_diasources(history)
    return run


def state(run: Path, storage_class=SqliteStorage) -> AssociationState:
    st = AssociationState(PARTITION, None, run, 30 / 3600, DataRoots((run,)))
    st._storage = storage_class(f"sqlite:///{run / 'nightpipe.sqlite'}", PARAMS)
    st.catalogue = Catalogue(CatalogueConfig(4096.0, 10), 2 * (PARAMS.fine_order - 6))
    return st


def load(run: Path, n_slices: int, storage_class=SqliteStorage):
    """The load stage of one big-field visit: each Slice's state and seconds."""
    stage, log = LoadStage("load", None), logging.getLogger("test")
    body = {"mjd": 60218.0, "ra": CENTRE[0], "dec": CENTRE[1], "filter": "r"}
    body["radius"] = BIG_RADIUS_DEG
    start = Event.new("telescope.next_visit", 1, body)
    master = MasterContext(0, n_slices, run, log, Board(0), state(run), key=1)
    master.state, master.events = MasterVisit(), {start.type: start}
    scatter = stage.preprocess(master)
    out = []
    for i, payload in enumerate(scatter.items):
        st = state(run, storage_class)
        ctx = ExecutionContext(i + 1, n_slices, run, log, Board(i + 1), st, key=1)
        ctx.state, ctx.events = SliceVisit(), {start.type: start}
        t = time.perf_counter()
        background = stage.process(ctx, payload)
        background.then(background.work())  # as the Slice would, in its two threads
        out.append((st, ctx.state, time.perf_counter() - t))
    return master.state, out


@pytest.mark.parametrize("per_deg2", [0.0, 20.0])
def test_a_big_field_loads_in_a_few_statements(tmp_path, per_deg2):
    run = sky(tmp_path, per_deg2)
    visit, slices = load(run, 1)  # warm: kernels, file cache
    assert len(visit.chunks) >= 70  # 47 deg^2 and the margin
    CountingStorage.statements = 0
    visit, slices = load(run, 2, CountingStorage)
    ((st, sv, seconds),) = slices[:1]
    chunks = len(visit.chunks)
    occupied = sum(1 for c in sv.held if st.catalogue.chunk(int(c)).n_objects)
    # per Slice: one probe for its chunks, and its strips (thousands of short
    # ranges) in statements of 1000 ranges; nothing per chunk ...
    few = 2 * 6
    if per_deg2 == 0:
        assert CountingStorage.statements <= few, CountingStorage.statements
    else:
        # ... but the sparse chunks' Objects, read together, and a short read
        # of each one's recent DIASources
        assert occupied > 20
        assert CountingStorage.statements <= few + 2 + 2 * chunks, CountingStorage.statements
    assert seconds < 1.0  # ~0.05 s on an idle machine; a wide bound for a shared one


@pytest.mark.parametrize("small", [4096, 3])
def test_a_big_field_loads_what_chunk_by_chunk_reads_give(tmp_path, monkeypatch, small):
    # small=3: most chunks count as dense, read one by one and their strips by ranges
    monkeypatch.setattr("association.stages.load.SMALL_CHUNK", small)
    run = sky(tmp_path, 20.0)
    _, slices = load(run, 2)
    with open_storage(None, run, PARAMS) as storage:
        for st, sv, _ in slices:
            cat = st.catalogue
            assert set(cat.held().tolist()) == set(sv.held.tolist())
            for chunk in sv.held.tolist():
                lo, hi = PARTITION.chunk_range(chunk)
                want = storage.load_objects(int(lo), int(hi))
                assert cat.chunk(chunk).objects.tobytes() == want.tobytes()
                recent = storage.load_recent_diasources(int(lo), int(hi), 10)
                assert cat.chunk(chunk).recent.tobytes() == recent.tobytes()
            # the strips: every Object of a margin chunk within reach of an owned one
            # (of a sparse chunk, all of them)
            assert len(sv.strip_chunks) > 10
            for chunk in sv.strip_chunks.tolist():
                strip = st.strips.get(chunk, tuple(sv.owned.tolist()))
                lo, hi = PARTITION.strip_ranges(np.array([chunk]), sv.owned)
                assert (PARTITION.chunk_of_fine(lo) == chunk).all()
                near = storage.load_object_columns(lo, hi, MATCH_COLUMNS)["diaObjectId"]
                whole = storage.load_objects(*map(int, PARTITION.chunk_range(chunk)))
                got = set(strip.columns["diaObjectId"].tolist())
                if len(whole) >= small:
                    assert got == set(near.tolist())
                else:
                    assert set(near.tolist()) <= got <= set(whole["diaObjectId"].tolist())


@pytest.mark.parametrize("first_fails", [False, True])
def test_two_visits_loading_at_once_read_a_chunk_once(tmp_path, first_fails):
    """Visit 2's load starts while visit 1's background read is under way on the same Slice.

    Visit 2 does not read the chunks visit 1 is reading; they are held once
    visit 1's `then` has run, before visit 2's. If visit 1's read fails,
    visit 2's `then` reads them itself.
    """
    run = sky(tmp_path, 20.0)
    stage, log = LoadStage("load", None), logging.getLogger("test")
    st = state(run, CountingStorage)
    background = []
    for key, ra in ((1, CENTRE[0]), (2, CENTRE[0] + 0.5)):
        body = {"mjd": 60218.0, "ra": ra, "dec": CENTRE[1], "filter": "r", "radius": 1.75}
        start = Event.new("telescope.next_visit", key, body)
        master = MasterContext(0, 1, run, log, Board(0), state(run), key=key)
        master.state, master.events = MasterVisit(), {start.type: start}
        (payload,) = stage.preprocess(master).items
        ctx = ExecutionContext(1, 1, run, log, Board(1), st, key=key)
        ctx.state, ctx.events = SliceVisit(), {start.type: start}
        background.append((stage.process(ctx, payload), ctx.state))
    (first, v1), (second, v2) = background
    shared = np.intersect1d(v1.reading, v2.held)
    assert len(shared) > 10 and not np.isin(v2.reading, v1.reading).any()
    assert st.loading == set(v1.reading.tolist()) | set(v2.reading.tolist())
    if first_fails:
        stage._reads_over(st, v1)  # what `finish` does for the failed visit
    else:
        first.then(first.work())
    done = second.work()
    CountingStorage.statements = 0
    second.then(done)
    # its own chunks and strips came from `work`; the first visit's, from its `then` ...
    assert (CountingStorage.statements > 0) == first_fails  # ... or, failed, read now
    assert st.loading == set()
    assert set(st.catalogue.held().tolist()) >= set(v2.held.tolist())
    with open_storage(None, run, PARAMS) as storage:
        for chunk in shared.tolist():
            lo, hi = PARTITION.chunk_range(chunk)
            want = storage.load_objects(int(lo), int(hi))
            assert st.catalogue.chunk(chunk).objects.tobytes() == want.tobytes()
