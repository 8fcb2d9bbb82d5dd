"""A visit's DIASources go in at the end of their chunks, not beside each Object's history.

Rubin's APDB partitions DIASources by sky region and time for this reason: a
visit's Store then writes a few pages per chunk instead of rewriting every
page that holds the field's earlier DIASources.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from association.columns import DIASOURCE_DTYPE, OBJECT_DTYPE
from association.storage import VisitRecord, open_storage
from tests.databases import PARAMS

N_OBJECTS = 20_000
HISTORY_PER_OBJECT = 2
VISIT_SOURCES = 2_000  # a tenth of the Objects, spread over all of them


def _frames(path: Path) -> int:
    """Frames in the WAL's current run, from the wal-index header (``-shm``)."""
    shm = Path(f"{path}-shm").read_bytes()[:48]
    return int.from_bytes(shm[16:20], "little")


def _sources(ids: np.ndarray, owner: np.ndarray, mjd: np.ndarray, visit: np.ndarray) -> np.ndarray:
    out = np.zeros(ids.size, DIASOURCE_DTYPE)
    out["diaSourceId"], out["diaObjectId"], out["visit"] = ids, owner, visit
    out["midpointMjdTai"] = mjd
    out["ra"] = out["dec"] = 1.0
    out["psfFlux"], out["psfFluxErr"] = 1000.0, 10.0
    return out


def test_a_visit_writes_a_few_pages_of_diasources(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    shift = PARAMS.chunk_shift
    objects = np.zeros(N_OBJECTS, OBJECT_DTYPE)
    objects["diaObjectId"] = np.arange(1, N_OBJECTS + 1)
    objects["fine"] = (123 << shift) + np.sort(rng.choice(1 << 20, N_OBJECTS, replace=False))
    objects["nDiaSources"] = HISTORY_PER_OBJECT
    owner = np.repeat(objects["diaObjectId"], HISTORY_PER_OBJECT)
    n_hist = owner.size
    history = _sources(
        np.arange(1, n_hist + 1), owner, 60000 + rng.random(n_hist), np.ones(n_hist, np.int64)
    )
    with open_storage(None, tmp_path, PARAMS, create=True) as storage:
        storage.bulk_load_objects(objects)
        storage.bulk_load_diasources(history, objects)
        path = Path(storage.path)
        pages = (
            sqlite3.connect(path)
            .execute("SELECT count(*) FROM dbstat WHERE name = 'diasources'")
            .fetchone()[0]
        )
        picked = np.sort(rng.choice(objects["diaObjectId"], VISIT_SOURCES, replace=False))
        visit = _sources(
            n_hist + 1 + np.arange(VISIT_SOURCES),
            picked,
            np.full(VISIT_SOURCES, 60001.5),
            np.full(VISIT_SOURCES, 2),
        )
        # No Objects passed: only the DIASources (and the visit's row) are written.
        record = VisitRecord(2, 60001.5, 0.0, 0.0, "r", VISIT_SOURCES, 0, 0, 0)
        storage.store_visit(record, visit, objects[:0])
        frames = _frames(path)
    # Clustered by Object, the visit's rows would land on nearly every page of
    # the history (a page holds about 50 Objects' DIASources, and a tenth of
    # the Objects have a new one); at the end of the chunk they fill a few new
    # pages, and the two id indexes take theirs at their ends.
    assert pages > 300, pages
    assert frames < pages / 4, (frames, pages)
