"""A visit's Object update rewrites the pages of repeated Objects, not of its whole field.

Nearly every Object a visit updates has been seen before: in a field of
Objects mostly seen once, clustering the repeated ones apart keeps the
update to their pages.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import numpy as np

from association.columns import OBJECT_DTYPE
from association.storage import VisitRecord, open_storage
from association.storage.rows import REPEATED_FROM
from tests.databases import PARAMS
from tests.test_diasource_layout import _sources

N_OBJECTS = 20_000
REPEATED = 2_000  # a tenth of the field, all updated by the visit
NEWLY_REPEATED = 20  # seen once before, a second time now: each moves


def _pages_written(path: Path) -> set[int]:
    """The pages the WAL holds frames of."""
    wal = Path(f"{path}-wal")
    if not wal.exists():
        return set()
    wal = wal.read_bytes()
    page_size = struct.unpack(">I", wal[8:12])[0]
    return {
        struct.unpack(">I", wal[at : at + 4])[0]
        for at in range(32, len(wal) - page_size, 24 + page_size)
    }


def test_a_visit_rewrites_the_pages_of_repeated_objects_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    shift = PARAMS.chunk_shift
    lo, hi = 123 << shift, 124 << shift
    objects = np.zeros(N_OBJECTS, OBJECT_DTYPE)
    objects["diaObjectId"] = np.arange(1, N_OBJECTS + 1)
    objects["fine"] = lo + np.sort(rng.choice(1 << 20, N_OBJECTS, replace=False))
    objects["ra"] = objects["dec"] = 1.0
    objects["nDiaSources"] = 1
    seen = rng.choice(N_OBJECTS, REPEATED + NEWLY_REPEATED, replace=False)
    repeated, newly = seen[:REPEATED], seen[REPEATED:]
    objects["nDiaSources"][repeated] = 5
    with open_storage(None, tmp_path, PARAMS, create=True) as storage:
        storage.bulk_load_objects(objects)
        path = Path(storage.path)
        before = _pages_written(path)
        updated = objects[np.sort(seen)].copy()
        updated["nDiaSources"] += 1
        updated["lastMjd"] = 60001.5
        n = len(updated)
        sources = _sources(
            np.arange(1, n + 1), updated["diaObjectId"], np.full(n, 60001.5), np.full(n, 2)
        )
        storage.store_visit(VisitRecord(2, 60001.5, 0.0, 0.0, "r", n, 0, 0, 0), sources, updated)
        db = sqlite3.connect(path)
        pages = {p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'objects'")}
        written = (_pages_written(path) - before) & pages
        back = storage.load_objects(lo, hi)
        stored = dict(db.execute("SELECT repeated, count(*) FROM objects GROUP BY 1"))
    # Spread over the field, a tenth of the Objects would be on nearly every
    # page (a page holds some 60); clustered, they fill a tenth of them.
    assert len(pages) > 300, len(pages)
    assert len(written) < len(pages) / 4, (len(written), len(pages))
    assert stored == {0: N_OBJECTS - REPEATED - NEWLY_REPEATED, 1: REPEATED + NEWLY_REPEATED}
    np.testing.assert_array_equal(back["diaObjectId"], objects["diaObjectId"])
    expected = objects["nDiaSources"].copy()
    expected[seen] += 1
    np.testing.assert_array_equal(back["nDiaSources"], expected)
    assert (back["nDiaSources"][newly] == REPEATED_FROM).all()
    assert (back["lastMjd"][seen] == 60001.5).all()
