"""Reading DIASource and prediction tables: round trips and clear errors."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from association.columns import DIASOURCE_DTYPE
from association.inputs.readers import (
    PREDICTION_DTYPE,
    BadInputError,
    read_diasources,
    read_predictions,
    write_table,
)

FORMATS = ["v.fits", "v.fits.gz", "v.parquet", "v.pq", "v.ecsv"]


def fine_of(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """A stand-in partition: any deterministic int64 of the position."""
    return (np.floor(ra * 1000) * 1_000_000 + np.floor(dec * 1000 + 90_000)).astype(np.int64)


def sources(n: int = 20, seed: int = 0) -> np.ndarray:
    """The file columns of ``n`` DIASources, as a structured array."""
    rng = np.random.default_rng(seed)
    out = np.zeros(
        n,
        dtype=[
            ("diaSourceId", "i8"),
            ("ra", "f8"),
            ("dec", "f8"),
            ("raErr", "f4"),
            ("decErr", "f4"),
            ("midpointMjdTai", "f8"),
            ("band", "i1"),
            ("psfFlux", "f4"),
            ("psfFluxErr", "f4"),
            ("snr", "f4"),
        ],
    )
    out["diaSourceId"] = 1000 + np.arange(n)
    out["ra"] = rng.uniform(0, 360, n)
    out["dec"] = rng.uniform(-90, 90, n)
    out["raErr"] = rng.uniform(0, 1e-4, n)
    out["decErr"] = rng.uniform(0, 1e-4, n)
    out["midpointMjdTai"] = 60000.25
    out["band"] = rng.integers(0, 6, n)
    out["psfFlux"] = rng.normal(1000, 300, n)
    out["psfFluxErr"] = rng.uniform(1, 50, n)
    out["snr"] = out["psfFlux"] / out["psfFluxErr"]
    return out


def predictions(n: int = 10) -> np.ndarray:
    rng = np.random.default_rng(3)
    out = np.zeros(n, dtype=PREDICTION_DTYPE)
    out["ssObjectId"] = 50 + np.arange(n)
    out["ra"] = rng.uniform(0, 360, n)
    out["dec"] = rng.uniform(-90, 90, n)
    out["semiMajorAxis"] = rng.uniform(1, 5, n)
    out["semiMinorAxis"] = out["semiMajorAxis"] * 0.5
    out["positionAngle"] = rng.uniform(0, 180, n)
    out["predictedMag"] = rng.uniform(18, 24, n)
    out["predictedMag"][:1] = np.nan
    out["mjd"] = 60000.25
    return out


@pytest.mark.parametrize("name", FORMATS)
def test_diasources_round_trip(tmp_path, name):
    src = sources()
    write_table(tmp_path / name, src)
    got = read_diasources(tmp_path / name, visit=42, partition_fine=fine_of)
    assert got.dtype == DIASOURCE_DTYPE
    for field in src.dtype.names:
        np.testing.assert_array_equal(got[field], src[field], err_msg=field)
    assert (got["visit"] == 42).all()
    assert (got["diaObjectId"] == 0).all() and (got["ssObjectId"] == 0).all()
    np.testing.assert_array_equal(got["fine"], fine_of(src["ra"], src["dec"]))


@pytest.mark.parametrize("name", FORMATS)
def test_predictions_round_trip(tmp_path, name):
    pred = predictions()
    write_table(tmp_path / name, pred)
    got = read_predictions(tmp_path / name)
    assert got.dtype == PREDICTION_DTYPE
    for field in pred.dtype.names:
        np.testing.assert_array_equal(got[field], pred[field], err_msg=field)


def test_optional_columns_absent_are_nan(tmp_path):
    src = sources()
    keep = [n for n in src.dtype.names if n not in ("raErr", "decErr", "snr")]
    write_table(tmp_path / "v.parquet", src[keep])
    got = read_diasources(tmp_path / "v.parquet", 1, fine_of)
    assert np.isnan(got["raErr"]).all() and np.isnan(got["snr"]).all()


@pytest.mark.parametrize("name", FORMATS)
def test_empty_table(tmp_path, name):
    write_table(tmp_path / name, sources(0))
    assert len(read_diasources(tmp_path / name, 1, fine_of)) == 0
    write_table(tmp_path / name, predictions(0))
    assert len(read_predictions(tmp_path / name)) == 0


def expect_bad(path, column, row, *fragments) -> None:
    with pytest.raises(BadInputError) as info:
        read_diasources(path, 1, fine_of)
    err = info.value
    assert (err.path, err.column, err.row) == (str(path), column, row)
    message = str(err)
    assert message.startswith(f"diasources file '{path}'")
    if column is not None:
        assert f"column '{column}'" in message
    if row is not None:
        assert f"row {row}" in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("name", FORMATS)
def test_dec_out_of_range(tmp_path, name):
    src = sources()
    src["dec"][17] = 95.2
    write_table(tmp_path / name, src)
    expect_bad(tmp_path / name, "dec", 17, "value 95.2 out of range [-90, 90]")


@pytest.mark.parametrize("name", ["v.fits", "v.parquet", "v.ecsv"])
def test_nan_ra(tmp_path, name):
    src = sources()
    src["ra"][4] = np.nan
    write_table(tmp_path / name, src)
    expect_bad(tmp_path / name, "ra", 4, "nan")


def test_ra_360_out_of_range(tmp_path):
    src = sources()
    src["ra"][2] = 360.0
    write_table(tmp_path / "v.parquet", src)
    expect_bad(tmp_path / "v.parquet", "ra", 2, "out of range [0, 360)")


@pytest.mark.parametrize("name", ["v.fits", "v.parquet", "v.ecsv"])
def test_unknown_band(tmp_path, name):
    src = sources()
    table = {n: src[n] for n in src.dtype.names}
    table["band"] = np.array(list("ugrizy"))[src["band"]]
    table["band"][9] = "q"
    arr = np.zeros(len(src), dtype=[(n, v.dtype) for n, v in table.items()])
    for n, v in table.items():
        arr[n] = v
    write_table(tmp_path / name, arr)
    expect_bad(tmp_path / name, "band", 9, "unknown band 'q'")


@pytest.mark.parametrize("name", ["v.fits", "v.parquet", "v.ecsv"])
def test_duplicate_id_names_both_rows(tmp_path, name):
    src = sources()
    src["diaSourceId"][12] = src["diaSourceId"][3]
    write_table(tmp_path / name, src)
    expect_bad(tmp_path / name, "diaSourceId", 12, "duplicate value 1003", "row 3")


@pytest.mark.parametrize("name", ["v.fits", "v.parquet", "v.ecsv"])
def test_missing_column(tmp_path, name):
    src = sources()
    write_table(tmp_path / name, src[[n for n in src.dtype.names if n != "psfFluxErr"]])
    expect_bad(tmp_path / name, "psfFluxErr", None, "missing")


def test_wrong_type(tmp_path):
    src = sources()
    arr = np.zeros(
        len(src), dtype=[(n, "f8" if n == "diaSourceId" else src.dtype[n]) for n in src.dtype.names]
    )
    for n in src.dtype.names:
        arr[n] = src[n]
    write_table(tmp_path / "v.parquet", arr)
    expect_bad(tmp_path / "v.parquet", "diaSourceId", None, "not an integer")


def test_error_pickles(tmp_path):
    err = BadInputError("value 95.2 out of range", path="/x/v.fits", column="dec", row=17)
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.path, back.column, back.row) == (str(err), "/x/v.fits", "dec", 17)


def test_missing_file(tmp_path):
    expect_bad(tmp_path / "nothing.parquet", None, None, "no such file")


@pytest.mark.parametrize("name", ["v.fits", "v.parquet", "v.ecsv", "v.fits.gz"])
def test_corrupt_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00garbage, not a table\n" * 10)
    expect_bad(tmp_path / name, None, None, "cannot read")


def test_unknown_suffix(tmp_path):
    (tmp_path / "v.csv").write_text("a,b\n")
    expect_bad(tmp_path / "v.csv", None, None, "unknown suffix")


def test_bad_prediction_ellipse(tmp_path):
    pred = predictions()
    pred["semiMinorAxis"][5] = pred["semiMajorAxis"][5] * 2
    write_table(tmp_path / "p.parquet", pred)
    with pytest.raises(BadInputError) as info:
        read_predictions(tmp_path / "p.parquet")
    assert (info.value.column, info.value.row) == ("semiMinorAxis", 5)
    assert "predictions file" in str(info.value)
    pred = predictions()
    pred["semiMinorAxis"][2] = 0
    pred["semiMajorAxis"][2] = 0
    write_table(tmp_path / "p.parquet", pred)
    with pytest.raises(BadInputError, match=r"column 'semiMinorAxis', row 2: value 0.0 is not > 0"):
        read_predictions(tmp_path / "p.parquet")


def test_parquet_read_is_fast(tmp_path):
    write_table(tmp_path / "v.parquet", sources(40_000))
    read_diasources(tmp_path / "v.parquet", 1, fine_of)  # warm imports
    start = time.perf_counter()
    got = read_diasources(tmp_path / "v.parquet", 1, fine_of)
    assert len(got) == 40_000
    assert time.perf_counter() - start < 0.1
