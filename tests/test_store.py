"""Storage on SQLite and PostgreSQL: schema, frozen parameters, idempotent Store, atomicity, loads."""

from __future__ import annotations

import logging
import sqlite3
import sys

import numpy as np
import pytest
from sqlalchemy import Engine, func, select, update

from association.cli.main import config_path
from association.columns import DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE
from association.storage import (
    SQLITE_NAME,
    FrozenParameterError,
    FrozenParameters,
    PostgresStorage,
    SchemaVersionError,
    SqliteStorage,
    SqlStorage,
    Storage,
    StorageError,
    VisitRecord,
    default_url,
    open_storage,
    storage_class,
)
from association.storage import tables as db
from association.storage.postgres import copy as pg_copy
from association.storage.sqlite import native as sqlite_native
from framework.config import load_config
from framework.stage import RankContext
from framework.status import Board
from tests.databases import PARAMS, table_rows


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
    out["raErr"] = np.where(rng.random(n) < 0.3, np.nan, rng.uniform(0, 1e-4, n))
    out["decErr"] = rng.uniform(0, 1e-4, n)
    out["psfFluxWMean"] = rng.normal(1000, 100, (n, NBANDS))
    out["psfFluxMeanErr"] = rng.uniform(1, 10, (n, NBANDS))
    out["psfFluxChi2"] = rng.uniform(0, 50, (n, NBANDS))
    for name in ("psfFluxWMean", "psfFluxMeanErr", "psfFluxChi2"):
        out[name][out["psfFluxNdata"] == 0] = np.nan
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
def db_url(request, tmp_path) -> str:
    """The URL of a new database, on each kind of server."""
    if request.param == "sqlite":
        return default_url(tmp_path)
    return request.getfixturevalue("pg_server").create_database()


@pytest.fixture
def storage(db_url, tmp_path) -> Storage:
    """A new database with the tables, through the backend's own (fast) class."""
    st = open_storage(db_url, tmp_path, PARAMS, create=True)
    assert isinstance(st, SqliteStorage if db_url.startswith("sqlite") else PostgresStorage)
    yield st
    st.close()


@pytest.fixture
def reference(storage, db_url, tmp_path) -> SqlStorage:
    """The same database through the driver (`SqlStorage`): the fast paths' reference."""
    st = open_storage(db_url, tmp_path, PARAMS, native_access=False)
    assert type(st) is SqlStorage
    yield st
    st.close()


def either(storage: Storage, reference: SqlStorage, native: bool) -> Storage:
    """The backend's own class, or the driver's way."""
    return storage if native else reference


def test_create_schema_twice(storage, db_url, tmp_path):
    with open_storage(db_url, tmp_path, PARAMS, create=True) as again:
        assert again.params == PARAMS
    assert table_rows(storage.engine)["schema_version"] == {(db.SCHEMA_VERSION,)}
    assert table_rows(storage.engine)["parameters"] == {("chunk_order", "6"), ("fine_order", "20")}


def test_newer_schema_refused(storage, db_url, tmp_path):
    with storage.engine.begin() as conn:
        conn.execute(update(db.schema_version).values(version=db.SCHEMA_VERSION + 1))
    with pytest.raises(SchemaVersionError, match="newer"):
        open_storage(db_url, tmp_path, PARAMS, create=True)


def test_frozen_parameters_checked_on_open(storage, db_url, tmp_path):
    """A database made with one fine order is refused under another, naming both."""
    where = storage.url
    for create in (True, False):
        with pytest.raises(FrozenParameterError) as err:
            open_storage(db_url, tmp_path, FrozenParameters(6, 18), create=create)
        assert str(err.value) == (
            f"database {where} was made with fine_order=20; the config says fine_order=18"
        )
    with pytest.raises(FrozenParameterError, match=r"made with chunk_order=6, fine_order=20; "):
        open_storage(db_url, tmp_path, FrozenParameters(5, 18))
    # Nothing was changed by the refused opens; a reader takes what is recorded.
    with open_storage(db_url, tmp_path, None) as reader:
        assert reader.params == PARAMS
    assert table_rows(storage.engine)["parameters"] == {("chunk_order", "6"), ("fine_order", "20")}


def test_pipeline_start_refuses_another_fine_order(tmp_path):
    """The shipped pipeline set up on rank 0 with ``--set settings.fine_order=18``."""
    open_storage(None, tmp_path, PARAMS, create=True).close()
    ctx = RankContext(0, 2, tmp_path, logging.getLogger("test"), Board(0))
    for fine_order in (18, 20):
        cfg = load_config(config_path("association"), {"settings": {"fine_order": fine_order}})
        hooks = cfg.build_hooks()
        if fine_order == 18:
            with pytest.raises(FrozenParameterError) as err:
                hooks.setup(ctx)
            assert "was made with fine_order=20; the config says fine_order=18" in str(err.value)
        else:
            ctx.shared = hooks.setup(ctx)
            assert ctx.shared.storage.params == PARAMS
            hooks.shutdown(ctx)


def test_open_needs_tables_and_parameters(db_url, tmp_path):
    if db_url.startswith("sqlite"):
        with pytest.raises(StorageError, match=r"nightpipe\.sqlite: no such file"):
            open_storage(db_url, tmp_path, PARAMS)
        assert not (tmp_path / SQLITE_NAME).exists()
    else:
        with pytest.raises(StorageError, match="has no nightpipe tables"):
            open_storage(db_url, tmp_path, PARAMS)
    with pytest.raises(ValueError, match="needs its frozen parameters"):
        open_storage(db_url, tmp_path, None, create=True)
    with (
        open_storage(db_url, tmp_path, PARAMS, create=True) as made,
        made.engine.begin() as conn,
    ):
        conn.execute(db.parameters.delete().where(db.parameters.c.name == "fine_order"))
    with pytest.raises(StorageError, match="records no fine_order"):
        open_storage(db_url, tmp_path, PARAMS)


def test_store_twice_is_idempotent(storage):
    record, sources, objects, moving, alerts = visit_data(5)
    storage.store_visit(record, sources, objects, moving, alerts)
    first = table_rows(storage.engine)
    storage.store_visit(record, sources, objects, moving, alerts)
    assert table_rows(storage.engine) == first
    assert storage.visit_stored(5) and not storage.visit_stored(6)
    assert storage.visit_record(5) == record and storage.visit_record(6) is None
    assert len(first["diasources"]) == 50 and len(first["alerts"]) == 3
    assert len(first["moving_matches"]) == 2 and len(first["objects"]) == 50


def test_failed_store_leaves_nothing(storage):
    record, sources, objects, moving, alerts = visit_data(5)
    storage.store_visit(record, sources, objects, moving, alerts)
    before = table_rows(storage.engine)
    record2, sources2, objects2, moving2, alerts2 = visit_data(6)
    sources2["diaSourceId"][-1] = sources["diaSourceId"][0]  # taken by visit 5
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        storage.store_visit(record2, sources2, objects2, moving2, alerts2)
    assert table_rows(storage.engine) == before
    assert not storage.visit_stored(6)


def test_update_objects_upserts_full_rows(storage):
    record, sources, objects, moving, alerts = visit_data(5)
    storage.store_visit(record, sources, objects, moving, alerts)
    changed = objects[:10].copy()
    changed["nDiaSources"] += 1
    changed["psfFluxMean"] = 1.5
    record2, sources2, _, _, _ = visit_data(6, n=0)
    storage.store_visit(record2, sources2, changed)
    got = storage.load_objects(0, 1 << 62)
    assert len(got) == 50
    assert_records_equal(got[np.isin(got["diaObjectId"], changed["diaObjectId"])], changed)


@pytest.mark.parametrize("native", [True, False])
def test_load_objects_range(storage, reference, native):
    rng = np.random.default_rng(1)
    fine = rng.integers(0, 1000, 2000)
    objects = make_objects(rng, rng.permutation(np.arange(1, 2001)) * 7, fine)
    storage.bulk_load_objects(objects)
    got = either(storage, reference, native).load_objects(200, 700)
    want = objects[(fine >= 200) & (fine < 700)]
    want = want[np.argsort(want["diaObjectId"])]
    assert_records_equal(got, want)
    assert len(either(storage, reference, native).load_objects(5000, 6000)) == 0


@pytest.mark.parametrize("native", [True, False])
def test_reads_over_many_ranges(storage, reference, native):
    # a field of many chunks: empty, sparse and one dense, read in few statements
    rng = np.random.default_rng(4)
    per_range = np.r_[np.zeros(40, int), rng.integers(1, 6, 40), 700]
    lo = np.arange(per_range.size) * 1000
    hi = lo + 1000
    fine = np.concatenate(
        [a + rng.integers(0, 1000, n) for a, n in zip(lo, per_range, strict=True)]
    )
    objects = make_objects(rng, rng.permutation(fine.size) + 1, fine)
    storage.bulk_load_objects(objects)
    db = either(storage, reference, native)
    with db.reading(), db.reading():  # nested: one shared connection
        counts = db.count_objects(lo, hi, 500)
        each = db.load_objects_ranges(lo, hi)
        strips = db.load_object_columns(lo[::2], lo[::2] + 500, ["diaObjectId", "raErr"])
        assert_records_equal(db.load_objects(int(lo[-1]), int(hi[-1])), each[-1])
    assert counts.tolist() == np.minimum(per_range, 500).tolist()
    assert len(each) == lo.size
    for a, b, got in zip(lo, hi, each, strict=True):
        want = objects[(fine >= a) & (fine < b)]
        assert_records_equal(got, want[np.argsort(want["diaObjectId"])])
    near = np.zeros(fine.size, bool)
    for a in lo[::2]:
        near |= (fine >= a) & (fine < a + 500)
    order = np.argsort(strips["diaObjectId"])
    assert strips["diaObjectId"][order].tolist() == sorted(objects["diaObjectId"][near].tolist())
    np.testing.assert_array_equal(
        strips["raErr"][order], objects["raErr"][near][np.argsort(objects["diaObjectId"][near])]
    )
    empty = np.empty(0, np.int64)
    assert (
        db.count_objects(empty, empty, 5).size == 0 and db.load_objects_ranges(empty, empty) == []
    )
    # more ranges than one statement takes
    many = np.arange(2500) * 40
    assert (
        db.count_objects(many, many + 40, 3).sum()
        == np.minimum(np.bincount(fine // 40, minlength=2500)[:2500], 3).sum()
    )


@pytest.mark.parametrize("native", [True, False])
def test_load_recent_diasources(storage, reference, native):
    rng = np.random.default_rng(2)
    objects = make_objects(rng, np.arange(1, 31), np.arange(30) * 10)
    storage.bulk_load_objects(objects)
    n_per = rng.integers(0, 25, 30)
    owner = np.repeat(objects["diaObjectId"], n_per)
    sources = make_sources(rng, np.arange(1, len(owner) + 1), 1, owner)
    sources["midpointMjdTai"] = rng.permutation(60000 + np.arange(len(owner)) / 100)
    sources["visit"] = rng.integers(1, 5, len(owner))
    sources["fine"] = 999_999  # a DIASource's own fine index does not choose it
    storage.bulk_load_diasources(sources)

    got = either(storage, reference, native).load_recent_diasources(50, 200, per_object=10)
    in_range = objects["diaObjectId"][(objects["fine"] >= 50) & (objects["fine"] < 200)]
    want = []
    for oid in in_range:
        mine = sources[sources["diaObjectId"] == oid]
        mine = mine[np.argsort(mine["midpointMjdTai"])][-10:]
        want.append(mine)
    assert_records_equal(got, np.concatenate(want))
    assert np.bincount(got["diaObjectId"]).max() <= 10
    assert len(storage.load_recent_diasources(50, 200, per_object=0)) == 0
    # the recent-history window: only those since the given time, of them the latest 10
    since = float(np.median(sources["midpointMjdTai"]))
    got = either(storage, reference, native).load_recent_diasources(50, 200, 10, since)
    late = sources[sources["midpointMjdTai"] >= since]
    want = [
        np.sort(late[late["diaObjectId"] == oid], order="midpointMjdTai")[-10:] for oid in in_range
    ]
    assert_records_equal(got, np.concatenate(want))
    assert got["midpointMjdTai"].min() >= since


def open_both(tmp_path, pg_server) -> list[Storage]:
    """New databases on SQLite and on PostgreSQL, through their own classes."""
    return [
        open_storage(None, tmp_path, PARAMS, create=True),
        open_storage(pg_server.create_database(), tmp_path, PARAMS, create=True),
    ]


def test_sqlite_and_postgres_agree(tmp_path, pg_server):
    storages = open_both(tmp_path, pg_server)
    for st in storages:
        for visit in (3, 4, 3):
            st.store_visit(*visit_data(visit))
        record, sources, objects, _, _ = visit_data(9, n=5)
        objects["isVariable"] = True
        st.store_visit(record, sources, objects)
    rows = [table_rows(st.engine) for st in storages]
    assert rows[0] == rows[1]
    assert len(rows[0]["visits"]) == 3
    for st in storages:
        with st.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(db.objects)).scalar() == 105
        st.close()


def test_store_rejects_other_visits_rows(sqlite_storage):
    record, sources, objects, moving, alerts = visit_data(5)
    sources["visit"][3] = 4
    with pytest.raises(ValueError, match="diasources row 3: visit 4"):
        sqlite_storage.store_visit(record, sources, objects, moving, alerts)
    assert not sqlite_storage.visit_stored(5)


def test_fetch_columns_kinds(storage):
    storage.bulk_load_objects(make_objects(np.random.default_rng(4), np.arange(1, 6), np.arange(5)))
    sql = 'SELECT "diaObjectId", "u_psfFluxMean", "nDiaSources" FROM objects WHERE fine >= ?'
    cols = storage.fetch_columns(sql, (0,), {"id": "i", "mean": "f4", "n": "i2"})
    assert [cols[k].dtype for k in ("id", "mean", "n")] == [np.int64, np.float32, np.int16]
    assert sorted(cols["id"]) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="kinds"):
        storage.fetch_columns(sql, (0,), {"id": "u8", "mean": "f", "n": "i"})


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


def fresh_storages(tmp_path, pg_server) -> dict[str, Storage]:
    """Empty databases: SQLite loaded natively, SQLite through the driver, PostgreSQL."""
    return {
        "native": open_storage(None, tmp_path / "native", PARAMS, create=True),
        "driver": open_storage(None, tmp_path / "driver", PARAMS, create=True, native_access=False),
        "postgres": open_storage(pg_server.create_database(), tmp_path, PARAMS, create=True),
    }


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
    storages = fresh_storages(tmp_path, pg_server)
    before = {name: schema_objects(st.engine) for name, st in storages.items()}
    for st in storages.values():
        # In two parts: into the empty tables (indexes built after), then into filled ones.
        st.bulk_load_objects(objects[:2000], chunk=700)
        st.bulk_load_objects(objects[2000:], chunk=700)
        st.bulk_load_diasources(sources[:-100], chunk=900)
        st.bulk_load_diasources(sources[-100:])
    rows = {name: table_rows(st.engine) for name, st in storages.items()}
    assert rows["native"] == rows["driver"] == rows["postgres"]
    assert len(rows["native"]["objects"]) == 3000
    assert len(rows["native"]["diasources"]) == len(sources)
    for name, st in storages.items():
        assert schema_objects(st.engine) == before[name], name
        assert_records_equal(st.load_objects(0, 50), objects[np.argsort(objects["diaObjectId"])])
        st.close()


@pytest.mark.parametrize("native", [True, False])
def test_bulk_load_duplicate_leaves_nothing(storage, reference, native):
    rng = np.random.default_rng(12)
    objects = make_objects(rng, np.arange(1, 101), np.arange(100))
    sources = history(rng, objects)
    sources["diaSourceId"][7] = sources["diaSourceId"][70]
    before = schema_objects(storage.engine)
    loader = either(storage, reference, native)
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        loader.bulk_load_diasources(sources)
    objects["diaObjectId"][5] = objects["diaObjectId"][50]
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        loader.bulk_load_objects(objects)
    rows = table_rows(storage.engine)
    assert not rows["objects"] and not rows["diasources"]
    assert schema_objects(storage.engine) == before  # dropped indexes are back


def test_bulk_load_rejects_bad_band(sqlite_storage):
    rng = np.random.default_rng(13)
    sources = make_sources(rng, np.arange(1, 11), 1, np.arange(1, 11))
    sources["band"][4] = 6
    with pytest.raises(ValueError, match="diasources row 4: band index 6"):
        sqlite_storage.bulk_load_diasources(sources)


@pytest.mark.parametrize("per_object", [1, 3, 10, 40])
def test_load_recent_native_equals_driver(storage, reference, per_object):
    rng = np.random.default_rng(14)
    objects = make_objects(rng, rng.permutation(400) + 1, rng.integers(0, 100, 400))
    storage.bulk_load_objects(objects)
    sources = history(rng, objects, max_per=30)
    storage.bulk_load_diasources(sources)
    got = {
        native: either(storage, reference, native).load_recent_diasources(20, 80, per_object)
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
def test_fetch_columns_native_equals_driver(sqlite_storage, tmp_path, presize):
    rng = np.random.default_rng(16)
    objects = make_objects(rng, np.arange(1, 3001), rng.integers(0, 100, 3000))
    sqlite_storage.bulk_load_objects(objects)
    sql = 'SELECT "diaObjectId", "g_psfFluxMean", "nDiaSources" FROM objects WHERE fine < ?'
    kinds = {"id": "i8", "mean": "f4", "n": "i4"}
    with open_storage(None, tmp_path, PARAMS, native_access=False) as driver:
        got = [
            st.fetch_columns(sql, (60,), kinds, presize=presize) for st in (sqlite_storage, driver)
        ]
    for name in kinds:
        np.testing.assert_array_equal(got[0][name], got[1][name])
    assert len(got[0]["id"]) == (objects["fine"] < 60).sum()


def test_postgres_copy_text_fallback_same_rows(tmp_path, pg_server, monkeypatch):
    """Columns of a type the binary COPY does not know go row by row, same rows."""
    rng = np.random.default_rng(17)
    objects = make_objects(rng, rng.permutation(500) + 1, rng.integers(0, 50, 500))
    sources = history(rng, objects)
    storages = open_both(tmp_path, pg_server)
    monkeypatch.setattr(pg_copy, "_BINARY_KINDS", ())
    for st in storages:
        st.bulk_load_objects(objects, chunk=128)
        st.bulk_load_diasources(sources, chunk=300)
    rows = [table_rows(st.engine) for st in storages]
    assert rows[0] == rows[1] and len(rows[0]["diasources"]) == len(sources)
    for st in storages:
        st.close()


def journal_mode(engine: Engine) -> str:
    with engine.connect() as conn:
        return conn.exec_driver_sql("PRAGMA journal_mode").scalar()


@needs_native
@pytest.mark.parametrize("other_connection", [False, True])
def test_native_bulk_load_ends_in_wal(sqlite_storage, tmp_path, other_connection):
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
        other = sqlite3.connect(tmp_path / SQLITE_NAME) if other_connection else None
        if other is not None:
            other.execute("SELECT count(*) FROM objects").fetchall()
        sqlite_storage.bulk_load_objects(objects)
        with pytest.raises(sqlite3.IntegrityError):
            sqlite_storage.bulk_load_diasources(sources)  # fails, rolled back
        if other is not None:
            other.close()
    alone = not other_connection
    assert switches == (
        [("truncate", True), ("wal", True)] * 2 if alone else [("truncate", False)] * 2
    )
    assert journal_mode(sqlite_storage.engine) == "wal"
    assert not (tmp_path / f"{SQLITE_NAME}-journal").exists()
    wal = tmp_path / f"{SQLITE_NAME}-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    rows = table_rows(sqlite_storage.engine)
    assert len(rows["objects"]) == 2000 and not rows["diasources"]


def test_native_store_equals_driver_store(tmp_path):
    """The C-API Store gives the driver's rows: upserts, a re-Store, and failures rolled back."""
    storages = [
        open_storage(None, tmp_path / "driver", PARAMS, create=True, native_access=False),
        open_storage(None, tmp_path / "native", PARAMS, create=True),
    ]
    assert [type(st) for st in storages] == [SqlStorage, SqliteStorage]
    assert storage_class("sqlite://") is SqlStorage  # no file: no C API

    def boom():
        raise RuntimeError("alert file failed")

    try:
        for st in storages:
            record, sources, objects, moving, alerts = visit_data(5)
            st.store_visit(record, sources, objects, moving, alerts)
            objects["nDiaSources"] += 1  # visit 6 updates visit 5's Objects
            objects["psfFluxMean"][:, 0] = np.nan
            record6, sources6, _, moving6, alerts6 = visit_data(6)
            st.store_visit(record6, sources6, objects, moving6, alerts6)
            st.store_visit(record, *visit_data(5)[1:])  # again: same rows
            record7, sources7, objects7, moving7, alerts7 = visit_data(7)
            with pytest.raises(RuntimeError, match="alert file"):
                st.store_visit(record7, sources7, objects7, moving7, alerts7, boom)
            sources7["diaSourceId"][-1] = sources["diaSourceId"][0]
            with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
                st.store_visit(record7, sources7, objects7, moving7, alerts7)
            assert not st.visit_stored(7)
        rows = [table_rows(st.engine) for st in storages]
        assert rows[0] == rows[1]
        assert len(rows[1]["objects"]) == 50 and len(rows[1]["diasources"]) == 100
    finally:
        for st in storages:
            st.close()


def test_diasources_go_by_their_objects_chunk(storage, reference):
    """A DIASource is stored under, and loaded with, its Object's chunk, wherever it lies."""
    rng = np.random.default_rng(11)
    shift = PARAMS.chunk_shift
    chunk_a, chunk_b = 7, 8
    fine = np.concatenate([(chunk_a << shift) + np.arange(20), (chunk_b << shift) + np.arange(20)])
    objects = make_objects(rng, np.arange(1, 41), fine)
    storage.bulk_load_objects(objects)
    owner = np.repeat(objects["diaObjectId"], 3)
    sources = make_sources(rng, np.arange(1, owner.size + 1), 1, owner)
    # each DIASource's own position in the other chunk: only its Object's counts
    own = np.where(owner <= 20, chunk_b, chunk_a)
    sources["fine"] = (own << shift) + rng.integers(0, 1 << shift, owner.size)
    storage.bulk_load_diasources(sources)
    # a visit: one DIASource of an Object it does not pass (looked up in the
    # database), one of a moving object (no Object: its own chunk)
    later = make_sources(rng, np.array([1001, 1002]), 5, np.array([3, 0]))
    later["ssObjectId"] = [0, 77]
    later["fine"] = [chunk_b << shift, (chunk_b << shift) + 5]
    later["midpointMjdTai"] = 60010.0
    storage.store_visit(VisitRecord(5, 60010.0, 0, 0, "r", 2, 0, 0, 1), later, objects[:0])
    d = db.diasources
    with storage.engine.connect() as conn:
        stored = dict(conn.execute(select(d.c.diaSourceId, d.c.chunk)).all())
    assert stored[1001] == chunk_a and stored[1002] == chunk_b
    assert all(
        stored[i] == (chunk_a if o <= 20 else chunk_b)
        for i, o in zip(sources["diaSourceId"].tolist(), owner.tolist(), strict=True)
    )
    for st in (storage, reference):
        for chunk, ids in ((chunk_a, range(1, 21)), (chunk_b, range(21, 41))):
            lo, hi = chunk << shift, (chunk + 1) << shift
            got = st.load_recent_diasources(lo, hi, per_object=10)
            assert set(got["diaObjectId"].tolist()) == set(ids)
            assert (1001 in got["diaSourceId"]) == (chunk == chunk_a)
            assert 1002 not in got["diaSourceId"]  # a mover's is no Object's history
            # a fine range inside the chunk: only its Objects
            part = st.load_recent_diasources(lo, lo + 10, per_object=10)
            assert set(part["diaObjectId"].tolist()) == set(list(ids)[:10])
