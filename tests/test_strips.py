"""Cached margin strips stay equal to the database as visits store Objects."""

from __future__ import annotations

import numpy as np

from association.catalogue.strips import Strip, StripCache
from association.sky.partition import Partition
from association.stages.load import MATCH_COLUMNS
from tests.test_store import make_objects, visit_data

PART = Partition(chunk_order=6, fine_order=20)
SHIFT = 2 * (PART.fine_order - PART.chunk_order)
CHUNK, OWNED = 1000, (1001, 1003)


def fines(rng: np.random.Generator, chunks: list[int], n: int) -> np.ndarray:
    """Random fine indexes in ``chunks``."""
    chunk = rng.choice(chunks, n)
    return (chunk << SHIFT) + rng.integers(0, 1 << SHIFT, n)


def strip_from_db(storage, lo, hi) -> dict[str, np.ndarray]:
    cols = storage.load_object_columns(lo, hi, MATCH_COLUMNS)
    cols["isVariable"] = cols["isVariable"].astype(bool)
    order = np.argsort(cols["diaObjectId"])
    return {k: v[order] for k, v in cols.items()}


def test_patched_strips_equal_a_fresh_read(sqlite_storage):
    rng = np.random.default_rng(5)
    lo, hi = PART.strip_ranges(np.array([CHUNK]), np.array(OWNED))
    # Dense near the strip: most Objects of the chunk lie outside it.
    start = make_objects(rng, np.arange(1, 20_001), fines(rng, [CHUNK, 1001, 1002], 20_000))
    sqlite_storage.bulk_load_objects(start)
    cache = StripCache()
    strip = cache.put(CHUNK, OWNED, lo, hi, strip_from_db(sqlite_storage, lo, hi))
    assert 0 < len(strip) < np.sum(start["fine"] >> SHIFT == CHUNK)
    before = {k: v.copy() for k, v in strip.columns.items()}

    for visit in (1, 2, 3):
        record, sources, _, moving, alerts = visit_data(visit, n=400, seed=9)
        # Changed Objects of every kind: old ones moved and turned variable,
        # new ones inside the strip, in the chunk outside it, and elsewhere.
        old = start[rng.choice(len(start), 300, replace=False)].copy()
        old["ra"] += rng.normal(0, 1e-4, len(old))
        old["isVariable"] = True
        new = make_objects(rng, visit * 100_000 + np.arange(1, 401), fines(rng, [CHUNK, 1002], 400))
        new["fine"][:50] = lo[0] + rng.integers(0, hi[0] - lo[0], 50)
        objects = np.concatenate([old, new])
        sqlite_storage.store_visit(record, sources, objects, moving=moving, alerts=alerts)
        fine = objects["fine"]
        assert cache.patch(fine >> SHIFT, fine, {k: objects[k] for k in objects.dtype.names}) == 1

        got = cache.get(CHUNK, OWNED)
        want = strip_from_db(sqlite_storage, lo, hi)
        assert got is not None and set(got.columns) == set(want)
        for name in want:
            np.testing.assert_array_equal(got.columns[name], want[name], err_msg=name)
    # A strip handed out earlier is not changed by later patches.
    for name, col in before.items():
        np.testing.assert_array_equal(strip.columns[name], col)
    assert len(cache.get(CHUNK, OWNED)) > len(strip)


def test_patch_leaves_other_chunks_alone():
    cache = StripCache()
    lo, hi = PART.strip_ranges(np.array([CHUNK]), np.array(OWNED))
    cols = {
        "diaObjectId": np.array([5, 9]),
        "ra": np.array([1.0, 2.0]),
        "dec": np.array([3.0, 4.0]),
        "isVariable": np.array([False, True]),
    }
    cache.put(CHUNK, OWNED, lo, hi, cols)
    outside = int(hi[0])  # ranges are merged, so the first fine after one is not in any
    assert outside >> SHIFT == CHUNK and not Strip(lo, hi, cols).contains(np.array([outside]))[0]
    fine = np.array([(1002 << SHIFT) + 1, lo[0], lo[-1], outside])
    rows = {
        "diaObjectId": np.array([11, 7, 9, 13]),
        "ra": np.zeros(4),
        "dec": np.zeros(4),
        "isVariable": np.zeros(4, bool),
    }
    # 11 lies in another chunk and 13 in this chunk outside the strip: both left out.
    # 7 joins the strip; 9 is updated.
    assert cache.patch(fine >> SHIFT, fine, rows) == 1
    got = cache.get(CHUNK, OWNED).columns
    np.testing.assert_array_equal(got["diaObjectId"], [5, 7, 9])
    np.testing.assert_array_equal(got["ra"], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(got["isVariable"], [False, False, False])


def test_a_read_older_than_a_write_still_gets_the_visits_objects():
    """A strip read in another thread from a snapshot before a visit's write, put after it."""
    lo, hi = PART.strip_ranges(np.array([CHUNK]), np.array(OWNED))
    before_write = {
        "diaObjectId": np.array([5, 9]),
        "ra": np.array([1.0, 2.0]),
        "dec": np.array([3.0, 4.0]),
        "isVariable": np.array([False, False]),
    }
    fine = np.array([lo[0], lo[-1]])
    decided = {
        "diaObjectId": np.array([7, 9]),
        "ra": np.array([5.0, 6.0]),
        "dec": np.array([7.0, 8.0]),
        "isVariable": np.array([True, True]),
    }
    for threaded in (True, False):
        cache = StripCache()
        cache.decided(1, fine >> SHIFT, fine, decided)
        if threaded:
            cache.read_started()  # the read's snapshot is taken before the write ...
        cache.written(1)
        got = cache.put(CHUNK, OWNED, lo, hi, before_write).columns  # ... and put after it
        if threaded:
            cache.read_ended()
            np.testing.assert_array_equal(got["diaObjectId"], [5, 7, 9])
            np.testing.assert_array_equal(got["ra"], [1.0, 5.0, 6.0])
        else:  # an unannounced stale read is not patched: what read_started is for
            np.testing.assert_array_equal(got["ra"], [1.0, 2.0])
        # once no read is under way, the written visit is no longer kept
        again = cache.put(CHUNK, OWNED, lo, hi, before_write).columns
        np.testing.assert_array_equal(again["ra"], [1.0, 2.0])
