"""PostgreSQL binary COPY into numpy columns: every field kind, NULLs, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from association.storage import PostgresStorage, SqlStorage, open_storage
from association.storage.postgres.copy import CopyFormatError, parse_binary_copy
from tests.databases import PARAMS

KINDS = {"s": "i2", "b": "i1", "r": "f4", "n": "f8", "i": "i4", "g": "i8", "d": "f8"}
SQL = (
    "SELECT s::smallint, b::boolean, r::real, n::float8, i::integer, g::bigint, d::float8 "
    "FROM (VALUES (-2, true, 2.5, NULL, -3, -5000000000, 1e300), "
    "(32767, false, -0.25, 7.0, 2147483647, 9223372036854775807, -0.0)) AS t(s, b, r, n, i, g, d)"
)


@pytest.fixture(scope="module")
def pg_url(pg_server):
    return pg_server.create_database()


@pytest.fixture
def pg_storage(pg_url, tmp_path):
    storage = open_storage(pg_url, tmp_path, PARAMS, create=True)
    assert isinstance(storage, PostgresStorage)
    yield storage
    storage.close()


def test_copy_equals_driver_for_every_kind(pg_storage, pg_url, tmp_path):
    fast = pg_storage.fetch_columns(SQL, (), KINDS)
    with open_storage(pg_url, tmp_path, PARAMS, native_access=False) as driver:
        assert type(driver) is SqlStorage
        slow = driver.fetch_columns(SQL, (), KINDS)
    for name, kind in KINDS.items():
        assert fast[name].dtype == np.dtype(kind)
        np.testing.assert_array_equal(fast[name], slow[name], err_msg=name)
    assert fast["g"].tolist() == [-5_000_000_000, 2**63 - 1]
    assert np.isnan(fast["n"][0]) and fast["n"][1] == 7.0
    assert fast["b"].tolist() == [1, 0] and fast["r"].tolist() == [2.5, -0.25]


def test_copy_with_parameters_and_no_rows(pg_storage):
    sql = "SELECT g FROM (VALUES (1::bigint), (2), (3)) AS t(g) WHERE g >= %s"
    got = pg_storage.fetch_columns(sql.replace("%s", "?"), (2,), {"g": "i8"})
    assert got["g"].tolist() == [2, 3]
    none = pg_storage.fetch_columns(sql.replace("%s", "?"), (9,), {"g": "i8"})
    assert none["g"].dtype == np.int64 and len(none["g"]) == 0


def test_bad_copy_data_is_named(pg_storage):
    with pytest.raises(CopyFormatError, match="signature"):
        parse_binary_copy(b"not a copy", {"a": "i8"})
    raw = pg_storage.engine.raw_connection()
    try:
        cur = raw.driver_connection.cursor()
        with cur, cur.copy(f"COPY ({SQL}) TO STDOUT (FORMAT BINARY)") as copy:
            data = b"".join(copy)
    finally:
        raw.close()
    with pytest.raises(CopyFormatError, match="rows of 3 fields"):
        parse_binary_copy(data, {"a": "i8", "b": "i8", "c": "i8"})
    with pytest.raises(CopyFormatError, match="'n': NULL in an integer column"):
        parse_binary_copy(data, {**KINDS, "n": "i8"})
