"""Storage on SQLite and PostgreSQL: schema, idempotent Store, atomicity, loads."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, func, select, update

from association import db
from association.schema import DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE
from association.store import (
    VisitRecord,
    bulk_load_diasources,
    bulk_load_objects,
    load_objects,
    load_recent_diasources,
    store_visit,
    table_rows,
    visit_stored,
)


def make_objects(rng: np.random.Generator, ids: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Objects with random contents, some NaN band statistics."""
    n = len(ids)
    out = np.zeros(n, dtype=OBJECT_DTYPE)
    out["diaObjectId"] = ids
    out["fine"] = fine
    out["ra"] = rng.uniform(0, 360, n)
    out["dec"] = rng.uniform(-90, 90, n)
    out["nDiaSources"] = rng.integers(1, 100, n)
    out["firstMjd"] = rng.uniform(60000, 60001, n)
    out["lastMjd"] = out["firstMjd"] + 1
    out["psfFluxNdata"] = rng.integers(0, 30, (n, NBANDS))
    out["psfFluxMean"] = rng.normal(1000, 100, (n, NBANDS))
    out["psfFluxM2"] = rng.uniform(0, 1e4, (n, NBANDS))
    out["psfFluxMean"][out["psfFluxNdata"] == 0] = np.nan
    out["isVariable"] = rng.integers(0, 2, n).astype(bool)
    return out


def make_sources(
    rng: np.random.Generator, ids: np.ndarray, visit: int, object_ids: np.ndarray
) -> np.ndarray:
    """DIASources of ``visit`` belonging to ``object_ids``, some NaN optional fields."""
    n = len(ids)
    out = np.zeros(n, dtype=DIASOURCE_DTYPE)
    out["diaSourceId"] = ids
    out["visit"] = visit
    out["diaObjectId"] = object_ids
    out["ra"] = rng.uniform(0, 360, n)
    out["dec"] = rng.uniform(-90, 90, n)
    out["raErr"] = np.where(rng.random(n) < 0.3, np.nan, rng.uniform(0, 1e-4, n))
    out["decErr"] = rng.uniform(0, 1e-4, n)
    out["midpointMjdTai"] = 60000 + visit / 1000
    out["band"] = rng.integers(0, NBANDS, n)
    out["psfFlux"] = rng.normal(1000, 100, n)
    out["psfFluxErr"] = rng.uniform(1, 10, n)
    out["snr"] = np.where(rng.random(n) < 0.3, np.nan, out["psfFlux"] / out["psfFluxErr"])
    out["fine"] = rng.integers(0, 1 << 40, n)
    return out


def visit_data(visit: int, n: int = 50, seed: int = 0):
    """A visit: its record, DIASources, the Objects they make, moving matches, alerts."""
    rng = np.random.default_rng(seed + visit)
    ids = visit * 1000 + np.arange(1, n + 1)
    sources = make_sources(rng, ids, visit, ids)
    objects = make_objects(rng, ids, sources["fine"])
    moving = (np.full(2, visit), np.array([7, 8]), ids[:2])
    alerts = (visit * 100 + np.arange(3), ids[:3], ids[:3])
    record = VisitRecord(visit, 60000 + visit / 1000, 10.0, -5.0, "r", n, 3, n, 2)
    return record, sources, objects, moving, alerts


def assert_records_equal(got: np.ndarray, want: np.ndarray) -> None:
    """Structured arrays equal field by field, NaN equal to NaN."""
    assert got.dtype == want.dtype and got.shape == want.shape
    for name in want.dtype.names:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path) -> Engine:
    """An empty database with the schema, on each kind of server."""
    if request.param == "sqlite":
        eng = db.make_engine(None, tmp_path)
    else:
        eng = create_engine(request.getfixturevalue("pg_server").create_database())
    db.create_schema(eng)
    yield eng
    eng.dispose()


def test_create_schema_twice(engine):
    db.create_schema(engine)
    assert table_rows(engine)["schema_version"] == {(db.SCHEMA_VERSION,)}


def test_newer_schema_refused(engine):
    with engine.begin() as conn:
        conn.execute(update(db.schema_version).values(version=db.SCHEMA_VERSION + 1))
    with pytest.raises(db.SchemaVersionError, match="newer"):
        db.create_schema(engine)


def test_store_twice_is_idempotent(engine):
    record, sources, objects, moving, alerts = visit_data(5)
    store_visit(engine, record, sources, objects, moving, alerts)
    first = table_rows(engine)
    store_visit(engine, record, sources, objects, moving, alerts)
    assert table_rows(engine) == first
    assert visit_stored(engine, 5) and not visit_stored(engine, 6)
    assert len(first["diasources"]) == 50 and len(first["alerts"]) == 3
    assert len(first["moving_matches"]) == 2 and len(first["objects"]) == 50


def test_failed_store_leaves_nothing(engine):
    record, sources, objects, moving, alerts = visit_data(5)
    store_visit(engine, record, sources, objects, moving, alerts)
    before = table_rows(engine)
    record2, sources2, objects2, moving2, alerts2 = visit_data(6)
    sources2["diaSourceId"][-1] = sources["diaSourceId"][0]  # taken by visit 5
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        store_visit(engine, record2, sources2, objects2, moving2, alerts2)
    assert table_rows(engine) == before
    assert not visit_stored(engine, 6)


def test_update_objects_upserts_full_rows(engine):
    record, sources, objects, moving, alerts = visit_data(5)
    store_visit(engine, record, sources, objects, moving, alerts)
    changed = objects[:10].copy()
    changed["nDiaSources"] += 1
    changed["psfFluxMean"] = 1.5
    record2, sources2, _, _, _ = visit_data(6, n=0)
    store_visit(engine, record2, sources2, changed)
    got = load_objects(engine, 0, 1 << 62)
    assert len(got) == 50
    assert_records_equal(got[np.isin(got["diaObjectId"], changed["diaObjectId"])], changed)


@pytest.mark.parametrize("native", [True, False])
def test_load_objects_range(engine, native):
    rng = np.random.default_rng(1)
    fine = rng.integers(0, 1000, 2000)
    objects = make_objects(rng, rng.permutation(np.arange(1, 2001)) * 7, fine)
    bulk_load_objects(engine, objects)
    got = load_objects(engine, 200, 700, native=native)
    want = objects[(fine >= 200) & (fine < 700)]
    want = want[np.argsort(want["diaObjectId"])]
    assert_records_equal(got, want)
    assert len(load_objects(engine, 5000, 6000, native=native)) == 0


@pytest.mark.parametrize("native", [True, False])
def test_load_recent_diasources(engine, native):
    rng = np.random.default_rng(2)
    objects = make_objects(rng, np.arange(1, 31), np.arange(30) * 10)
    bulk_load_objects(engine, objects)
    n_per = rng.integers(0, 25, 30)
    owner = np.repeat(objects["diaObjectId"], n_per)
    sources = make_sources(rng, np.arange(1, len(owner) + 1), 1, owner)
    sources["midpointMjdTai"] = rng.permutation(60000 + np.arange(len(owner)) / 100)
    sources["visit"] = rng.integers(1, 5, len(owner))
    sources["fine"] = 999_999  # a DIASource's own fine index does not choose it
    bulk_load_diasources(engine, sources)

    got = load_recent_diasources(engine, 50, 200, per_object=10, native=native)
    in_range = objects["diaObjectId"][(objects["fine"] >= 50) & (objects["fine"] < 200)]
    want = []
    for oid in in_range:
        mine = sources[sources["diaObjectId"] == oid]
        mine = mine[np.argsort(mine["midpointMjdTai"])][-10:]
        want.append(mine)
    assert_records_equal(got, np.concatenate(want))
    assert np.bincount(got["diaObjectId"]).max() <= 10
    assert len(load_recent_diasources(engine, 50, 200, per_object=0)) == 0


def test_sqlite_and_postgres_agree(tmp_path, pg_server):
    engines = [
        db.make_engine(None, tmp_path),
        create_engine(pg_server.create_database()),
    ]
    for eng in engines:
        db.create_schema(eng)
        for visit in (3, 4, 3):
            store_visit(eng, *visit_data(visit))
        record, sources, objects, _, _ = visit_data(9, n=5)
        objects["isVariable"] = True
        store_visit(eng, record, sources, objects)
    rows = [table_rows(eng) for eng in engines]
    assert rows[0] == rows[1]
    assert len(rows[0]["visits"]) == 3
    for eng in engines:
        with eng.connect() as conn:
            assert conn.execute(select(func.count()).select_from(db.objects)).scalar() == 105
        eng.dispose()


def test_store_rejects_other_visits_rows(sqlite_engine):
    record, sources, objects, moving, alerts = visit_data(5)
    sources["visit"][3] = 4
    with pytest.raises(ValueError, match="diasources row 3: visit 4"):
        store_visit(sqlite_engine, record, sources, objects, moving, alerts)
    assert not visit_stored(sqlite_engine, 5)


def test_fetch_columns_kinds(engine):
    bulk_load_objects(engine, make_objects(np.random.default_rng(4), np.arange(1, 6), np.arange(5)))
    sql = 'SELECT "diaObjectId", "u_psfFluxMean", "nDiaSources" FROM objects WHERE fine >= ?'
    cols = db.fetch_columns(engine, sql, (0,), {"id": "i", "mean": "f4", "n": "i2"})
    assert [cols[k].dtype for k in ("id", "mean", "n")] == [np.int64, np.float32, np.int16]
    assert sorted(cols["id"]) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="kinds"):
        db.fetch_columns(engine, sql, (0,), {"id": "u8", "mean": "f", "n": "i"})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_native_reader_available():
    # Without it SQLite loads fall back to the much slower driver path.
    assert db._native_reader() is not None
