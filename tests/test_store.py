"""Storage on SQLite and PostgreSQL: schema, idempotent Store, atomicity, loads."""

from __future__ import annotations

import sqlite3
import sys

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, func, select, update

from association.columns import DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE
from association.storage import tables as db
from association.storage.sql import (
    VisitRecord,
    bulk_load_diasources,
    bulk_load_objects,
    load_objects,
    load_recent_diasources,
    native_writer,
    store_visit,
    table_rows,
    visit_stored,
)
from association.storage.sqlite import native as sqlite_native


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
    assert sqlite_native.available()


def history(rng: np.random.Generator, objects: np.ndarray, max_per: int = 25) -> np.ndarray:
    """Past DIASources of ``objects`` in random order, with repeated times (ties)."""
    n_per = rng.integers(0, max_per, len(objects))
    owner = np.repeat(objects["diaObjectId"], n_per)
    out = make_sources(rng, rng.permutation(len(owner)) + 1, -1, owner)
    out["midpointMjdTai"] = 60000 + rng.integers(0, 40, len(owner)) / 4  # many ties
    out["visit"] = rng.integers(-1, 5, len(owner))
    return out[rng.permutation(len(out))]


def fresh_engines(tmp_path, pg_server) -> dict[str, Engine]:
    """Empty databases: SQLite loaded natively, SQLite through the driver, PostgreSQL."""
    out = {}
    for name in ("native", "driver"):
        out[name] = db.make_engine(None, tmp_path / name)
    out["postgres"] = create_engine(pg_server.create_database())
    for eng in out.values():
        db.create_schema(eng)
    return out


def schema_objects(engine: Engine) -> set[str]:
    """Names of the tables and indexes in the database."""
    from sqlalchemy import inspect

    insp = inspect(engine)
    names = set(insp.get_table_names())
    for table in names.copy():
        names |= {f"{table}.{ix['name']}" for ix in insp.get_indexes(table)}
    return names


def test_bulk_load_same_rows_everywhere(tmp_path, pg_server):
    rng = np.random.default_rng(11)
    objects = make_objects(rng, rng.permutation(3000) + 1, rng.integers(0, 50, 3000))
    sources = history(rng, objects)
    engines = fresh_engines(tmp_path, pg_server)
    before = {name: schema_objects(eng) for name, eng in engines.items()}
    for name, eng in engines.items():
        native = name == "native"
        # In two parts: into the empty tables (indexes built after), then into filled ones.
        bulk_load_objects(eng, objects[:2000], chunk=700, native=native)
        bulk_load_objects(eng, objects[2000:], chunk=700, native=native)
        bulk_load_diasources(eng, sources[:-100], chunk=900, native=native)
        bulk_load_diasources(eng, sources[-100:], native=native)
    rows = {name: table_rows(eng) for name, eng in engines.items()}
    assert rows["native"] == rows["driver"] == rows["postgres"]
    assert len(rows["native"]["objects"]) == 3000
    assert len(rows["native"]["diasources"]) == len(sources)
    for name, eng in engines.items():
        assert schema_objects(eng) == before[name], name
        assert_records_equal(load_objects(eng, 0, 50), objects[np.argsort(objects["diaObjectId"])])
        eng.dispose()


@pytest.mark.parametrize("native", [True, False])
def test_bulk_load_duplicate_leaves_nothing(engine, native):
    rng = np.random.default_rng(12)
    objects = make_objects(rng, np.arange(1, 101), np.arange(100))
    sources = history(rng, objects)
    sources["diaSourceId"][7] = sources["diaSourceId"][70]
    before = schema_objects(engine)
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        bulk_load_diasources(engine, sources, native=native)
    objects["diaObjectId"][5] = objects["diaObjectId"][50]
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        bulk_load_objects(engine, objects, native=native)
    rows = table_rows(engine)
    assert not rows["objects"] and not rows["diasources"]
    assert schema_objects(engine) == before  # dropped indexes are back


def test_bulk_load_rejects_bad_band(sqlite_engine):
    rng = np.random.default_rng(13)
    sources = make_sources(rng, np.arange(1, 11), 1, np.arange(1, 11))
    sources["band"][4] = 6
    with pytest.raises(ValueError, match="diasources row 4: band index 6"):
        bulk_load_diasources(sqlite_engine, sources)


@pytest.mark.parametrize("per_object", [1, 3, 10, 40])
def test_load_recent_native_equals_driver(engine, per_object):
    rng = np.random.default_rng(14)
    objects = make_objects(rng, rng.permutation(400) + 1, rng.integers(0, 100, 400))
    bulk_load_objects(engine, objects)
    sources = history(rng, objects, max_per=30)
    bulk_load_diasources(engine, sources)
    got = {
        native: load_recent_diasources(engine, 20, 80, per_object, native=native)
        for native in (True, False)
    }
    assert_records_equal(got[True], got[False])
    # The reference: per Object in range, its last per_object by (mjd, diaSourceId).
    in_range = np.sort(objects["diaObjectId"][(objects["fine"] >= 20) & (objects["fine"] < 80)])
    want = []
    for oid in in_range:
        mine = sources[sources["diaObjectId"] == oid]
        want.append(mine[np.lexsort((mine["diaSourceId"], mine["midpointMjdTai"]))][-per_object:])
    assert_records_equal(got[True], np.concatenate(want))


needs_native = pytest.mark.skipif(not sqlite_native.available(), reason="no native SQLite access")


@pytest.fixture
def scratch_db(tmp_path) -> str:
    """A SQLite file with table t(k, v, x, s), primary key (k, v), an index on x."""
    import sqlite3

    path = str(tmp_path / "scratch.sqlite")
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(
        "CREATE TABLE t (k BIGINT NOT NULL, v BIGINT NOT NULL, x DOUBLE, s VARCHAR(3), "
        "PRIMARY KEY (k, v)) WITHOUT ROWID"
    )
    con.execute("CREATE INDEX ix_t_x ON t (x)")
    con.close()
    return path


@needs_native
def test_native_bulk_insert_and_fetch_each(scratch_db):
    rng = np.random.default_rng(15)
    n = 5000
    k = rng.integers(0, 300, n)
    v = rng.permutation(n)
    x = np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)).astype(np.float32)
    x[:3] = [0.0, -0.0, np.nan]  # a real zero is no NULL
    s = rng.integers(0, 3, n).astype(np.int8)
    order = np.lexsort((v, k))
    with sqlite_native.connect(scratch_db) as conn:
        done = conn.bulk_insert(
            "t",
            {"k": k, "v": v, "x": x, "s": s},
            texts={"s": ["a", "bb", "ccc"]},
            order=order,
            chunk=333,
            rows_per_statement=7,
        )
        assert done == n and not conn.in_transaction
        # The index dropped for the load is back.
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'") == [("ix_t_x",)]
        assert conn.execute("SELECT s, count(*) FROM t GROUP BY s") == [
            ("a", int((s == 0).sum())),
            ("bb", int((s == 1).sum())),
            ("ccc", int((s == 2).sum())),
        ]
        keys = np.array([5, 299, 1000, 17, 5])  # one with no rows, one twice
        sql = "SELECT k, v, x FROM t WHERE k = ? ORDER BY v DESC LIMIT ?"
        kinds = {"k": "i8", "v": "i4", "x": "f4"}
        for expected in (0, 3, 10_000):  # regrowing in the middle of a key's rows
            got = conn.fetch_each(sql, keys, kinds, (4,), expected=expected)
            back = conn.fetch_each(sql, keys, kinds, (4,), expected=expected, reverse_each=True)
            want = []
            for key in keys:
                mine = np.flatnonzero(k == key)
                want.extend(mine[np.argsort(v[mine])[::-1][:4]])
            np.testing.assert_array_equal(got["k"], k[want])
            np.testing.assert_array_equal(got["v"], v[want])
            np.testing.assert_array_equal(got["x"], x[want])
            for key in np.unique(keys):
                mine, theirs = got["k"] == key, back["k"] == key
                np.testing.assert_array_equal(
                    back["v"][theirs], got["v"][mine][::-1][: theirs.sum()]
                )
        zeros = conn.fetch("SELECT x FROM t WHERE v IN (?, ?, ?)", v[:3].tolist(), {"x": "f8"})
        assert sorted(map(repr, zeros["x"].tolist())) == ["0.0", "0.0", "nan"]  # SQLite keeps no -0


@needs_native
def test_native_bulk_insert_failure_rolls_back(scratch_db):
    with sqlite_native.connect(scratch_db) as conn:
        conn.bulk_insert("t", {"k": np.array([1]), "v": np.array([1])})
        cols = {"k": np.arange(100), "v": np.zeros(100, int)}
        cols["k"][50] = 1  # (1, 0) is new, but (1, 1) clashes below
        cols["v"][50] = 1
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.bulk_insert("t", cols)
        assert conn.execute("SELECT count(*) FROM t") == [(1,)]
        with pytest.raises(ValueError, match="column s row 1: index 2"):
            conn.bulk_insert(
                "t", {"k": [7, 8], "v": [7, 8], "s": np.array([0, 2])}, texts={"s": ["a"]}
            )
        conn.execute("BEGIN")
        assert conn.in_transaction
    with sqlite_native.connect(scratch_db) as conn:  # closing rolled back
        assert conn.execute("SELECT count(*) FROM t") == [(1,)]


@pytest.mark.parametrize("presize", [True, False])
def test_fetch_columns_native_equals_driver(sqlite_engine, presize):
    rng = np.random.default_rng(16)
    objects = make_objects(rng, np.arange(1, 3001), rng.integers(0, 100, 3000))
    bulk_load_objects(sqlite_engine, objects)
    sql = 'SELECT "diaObjectId", "g_psfFluxMean", "nDiaSources" FROM objects WHERE fine < ?'
    kinds = {"id": "i8", "mean": "f4", "n": "i4"}
    got = [
        db.fetch_columns(sqlite_engine, sql, (60,), kinds, native=native, presize=presize)
        for native in (True, False)
    ]
    for name in kinds:
        np.testing.assert_array_equal(got[0][name], got[1][name])
    assert len(got[0]["id"]) == (objects["fine"] < 60).sum()


def test_postgres_copy_text_fallback_same_rows(tmp_path, pg_server, monkeypatch):
    """Columns of a type the binary COPY does not know go row by row, same rows."""
    import association.storage.sql as store

    rng = np.random.default_rng(17)
    objects = make_objects(rng, rng.permutation(500) + 1, rng.integers(0, 50, 500))
    sources = history(rng, objects)
    engines = [db.make_engine(None, tmp_path), create_engine(pg_server.create_database())]
    monkeypatch.setattr(store, "_PG_BINARY_KINDS", ())
    for eng in engines:
        db.create_schema(eng)
        bulk_load_objects(eng, objects, chunk=128)
        bulk_load_diasources(eng, sources, chunk=300)
    rows = [table_rows(eng) for eng in engines]
    assert rows[0] == rows[1] and len(rows[0]["diasources"]) == len(sources)
    for eng in engines:
        eng.dispose()


def journal_mode(engine: Engine) -> str:
    with engine.connect() as conn:
        return conn.exec_driver_sql("PRAGMA journal_mode").scalar()


@needs_native
@pytest.mark.parametrize("other_connection", [False, True])
def test_native_bulk_load_ends_in_wal(sqlite_engine, tmp_path, other_connection):
    """Alone, the load goes under a rollback journal; either way it ends in WAL, checkpointed."""
    rng = np.random.default_rng(18)
    objects = make_objects(rng, rng.permutation(2000) + 1, rng.integers(0, 50, 2000))
    sources = history(rng, objects)
    sources["diaSourceId"][3] = sources["diaSourceId"][4]
    switches = []
    real = sqlite_native.Connection._set_journal_mode

    def spy(self, mode, wait_ms):
        switches.append((mode, ok := real(self, mode, wait_ms)))
        return ok

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sqlite_native.Connection, "_set_journal_mode", spy)
        other = sqlite3.connect(tmp_path / db.SQLITE_NAME) if other_connection else None
        if other is not None:
            other.execute("SELECT count(*) FROM objects").fetchall()
        bulk_load_objects(sqlite_engine, objects)
        with pytest.raises(sqlite3.IntegrityError):
            bulk_load_diasources(sqlite_engine, sources)  # fails, rolled back
        if other is not None:
            other.close()
    alone = not other_connection
    assert switches == (
        [("truncate", True), ("wal", True)] * 2 if alone else [("truncate", False)] * 2
    )
    assert journal_mode(sqlite_engine) == "wal"
    assert not (tmp_path / f"{db.SQLITE_NAME}-journal").exists()
    wal = tmp_path / f"{db.SQLITE_NAME}-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    rows = table_rows(sqlite_engine)
    assert len(rows["objects"]) == 2000 and not rows["diasources"]


def test_native_store_equals_driver_store(tmp_path):
    """The C-API Store gives the driver's rows: upserts, a re-Store, and failures rolled back."""
    engines = []
    for name in ("driver", "native"):
        eng = db.make_engine(None, tmp_path / name)
        db.create_schema(eng)
        engines.append(eng)
    writer = native_writer(engines[1])
    assert writer is not None and native_writer(create_engine("sqlite://")) is None

    def boom():
        raise RuntimeError("alert file failed")

    try:
        for eng, w in zip(engines, (None, writer), strict=True):
            record, sources, objects, moving, alerts = visit_data(5)
            store_visit(eng, record, sources, objects, moving, alerts, writer=w)
            objects["nDiaSources"] += 1  # visit 6 updates visit 5's Objects
            objects["psfFluxMean"][:, 0] = np.nan
            record6, sources6, _, moving6, alerts6 = visit_data(6)
            store_visit(eng, record6, sources6, objects, moving6, alerts6, writer=w)
            store_visit(eng, record, *visit_data(5)[1:], writer=w)  # again: same rows
            record7, sources7, objects7, moving7, alerts7 = visit_data(7)
            with pytest.raises(RuntimeError, match="alert file"):
                store_visit(eng, record7, sources7, objects7, moving7, alerts7, boom, writer=w)
            sources7["diaSourceId"][-1] = sources["diaSourceId"][0]
            with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
                store_visit(eng, record7, sources7, objects7, moving7, alerts7, writer=w)
            assert not visit_stored(eng, 7)
        rows = [table_rows(eng) for eng in engines]
        assert rows[0] == rows[1]
        assert len(rows[1]["objects"]) == 50 and len(rows[1]["diasources"]) == 100
    finally:
        writer.close()
        for eng in engines:
            eng.dispose()
