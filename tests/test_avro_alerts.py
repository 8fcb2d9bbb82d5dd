"""Compiled alert encoder: the same bytes and records as build_alert + fastavro."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import fastavro
import numpy as np
import pytest
from fastavro.validation import validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from association.alerts import avro as avro_alerts
from association.alerts.avro import alert_schema, encode_alerts, write_alert_file
from association.alerts.packets import read_alerts, write_visit_alerts
from association.columns import DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE
from tests.oracles.alerts import build_alert

SYNC = bytes(range(16))
I64 = np.iinfo(np.int64)
# IEEE patterns the dict path treats specially: quiet, negative and signalling
# NaNs, infinities, signed zeros.
F4_SPECIAL = np.array(
    [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFA00005, 0x7F800000, 0xFF800000, 0x80000000, 0],
    np.uint32,
).view(np.float32)
F8_SPECIAL = np.array(
    [0x7FF8000000000000, 0xFFF8000000000123, 0x7FF0000000000001, 0x7FF0000000000000, 1 << 63],
    np.uint64,
).view(np.float64)


def _floats(rng: np.random.Generator, shape, special: np.ndarray, dtype) -> np.ndarray:
    out = rng.normal(0.0, 1e3, shape).astype(dtype)
    pick = rng.random(shape) < 0.25
    out[pick] = rng.choice(special, int(pick.sum()))
    return out


def random_sources(rng: np.random.Generator, n: int) -> np.ndarray:
    """DIASources with extreme ids, null ids and special float values."""
    out = np.zeros(n, DIASOURCE_DTYPE)
    for name in ("diaSourceId", "visit", "diaObjectId", "ssObjectId"):
        out[name] = rng.integers(I64.min, I64.max, n, endpoint=True)
        small = rng.random(n) < 0.3
        out[name][small] = rng.integers(-200, 200, int(small.sum()))
    out["diaObjectId"][rng.random(n) < 0.3] = 0
    for name in ("ra", "dec", "midpointMjdTai"):
        out[name] = _floats(rng, n, F8_SPECIAL, np.float64)
    for name in ("raErr", "decErr", "psfFlux", "psfFluxErr", "snr"):
        out[name] = _floats(rng, n, F4_SPECIAL, np.float32)
    out["band"] = rng.integers(-NBANDS, NBANDS, n)
    return out


def random_objects(rng: np.random.Generator, n: int) -> np.ndarray:
    """Objects with Ndata 0, 1 and many per band, NaN/negative/-0.0 M2."""
    out = np.zeros(n, OBJECT_DTYPE)
    out["diaObjectId"] = rng.integers(I64.min, I64.max, n, endpoint=True)
    out["nDiaSources"] = rng.integers(-(2**31), 2**31, n)
    for name in ("ra", "dec", "firstMjd", "lastMjd"):
        out[name] = _floats(rng, n, F8_SPECIAL, np.float64)
    out["psfFluxNdata"] = rng.choice([-3, 0, 0, 1, 1, 2, 7, 32767], (n, NBANDS))
    out["psfFluxMean"] = _floats(rng, (n, NBANDS), F4_SPECIAL, np.float32)
    out["psfFluxM2"] = _floats(rng, (n, NBANDS), F4_SPECIAL, np.float32)
    out["isVariable"] = rng.random(n) < 0.5
    return out


def random_visit(seed: int, n: int = 150, n_obj: int = 40, n_prv: int = 400) -> tuple:
    """Arguments of `encode_alerts`: zero, one and many prv; null Objects."""
    rng = np.random.default_rng(seed)
    sources, objects, prv = (
        random_sources(rng, n),
        random_objects(rng, n_obj),
        random_sources(rng, n_prv),
    )
    obj_index = rng.integers(-1, n_obj, n)
    lo = rng.integers(0, n_prv, n)
    hi = np.minimum(lo + rng.choice([0, 0, 1, 5, 40], n), n_prv)
    return sources, objects, obj_index, prv, lo, hi


def dicts(sources, objects, obj_index, prv, lo, hi) -> list[dict]:
    """The reference records, one `build_alert` per alert."""
    return [
        build_alert(
            int(src["diaSourceId"]),
            src,
            None if obj_index[i] < 0 else objects[obj_index[i]],
            prv[lo[i] : hi[i]],
        )
        for i, src in enumerate(sources)
    ]


def fastavro_bytes(records: list[dict], codec: str = "null", **kw) -> bytes:
    fo = io.BytesIO()
    fastavro.writer(fo, alert_schema(), records, codec=codec, sync_marker=SYNC, **kw)
    return fo.getvalue()


def same(a, b) -> bool:
    """Equal records, any NaN equal to any NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def ours(tmp_path: Path, args: tuple, name: str = "visit.avro", **kw) -> bytes:
    path = tmp_path / name
    assert write_alert_file(path, *args, **kw) == len(args[0])
    return path.read_bytes()


@pytest.mark.parametrize("seed", range(4))
def test_one_block_bytes_equal_fastavro(tmp_path, seed):
    args = random_visit(seed)
    expected = fastavro_bytes(dicts(*args), sync_interval=1 << 30)
    got = ours(tmp_path, args, sync_marker=SYNC, codec="null", block_records=10**6)
    assert got == expected


@pytest.mark.parametrize("sync_interval", [1, 700, 5000, 16000])
def test_fastavro_block_splitting_bytes_equal(tmp_path, sync_interval):
    args = random_visit(11)
    expected = fastavro_bytes(dicts(*args), sync_interval=sync_interval)
    got = ours(tmp_path, args, sync_marker=SYNC, codec="null", sync_interval=sync_interval)
    assert got == expected


def test_encode_alerts_is_the_concatenated_records():
    args = random_visit(3)
    expected = io.BytesIO()
    for record in dicts(*args):
        fastavro.schemaless_writer(expected, alert_schema(), record)
    assert encode_alerts(*args) == expected.getvalue()


def test_worst_case_size_fits_the_buffer_bound():
    rng = np.random.default_rng(5)
    sources, prv = random_sources(rng, 20), random_sources(rng, 40)
    objects = random_objects(rng, 20)
    for rows in (sources, prv):
        rows["diaSourceId"] = rows["visit"] = rows["diaObjectId"] = I64.min
        for name in ("raErr", "decErr", "snr"):
            rows[name] = 1.5
    objects["diaObjectId"], objects["nDiaSources"] = I64.min, -(2**31)
    objects["psfFluxNdata"], objects["psfFluxMean"] = 2, 3.0
    lo = np.arange(20) * 2
    data = encode_alerts(sources, objects, np.arange(20), prv, lo, lo + 2)
    # Every field at its longest but the prv count, one byte instead of ten.
    assert len(data) == 20 * (avro_alerts._ALERT_MAX - 9) + 40 * avro_alerts._SOURCE_MAX


@pytest.mark.parametrize("workers", [1, 3])
def test_deflate_reads_back_as_build_alert_dicts(tmp_path, workers):
    args = random_visit(7, n=300)
    data = ours(tmp_path, args, sync_marker=SYNC, block_records=37, workers=workers)
    with io.BytesIO(data) as fo:
        reader = fastavro.reader(fo)
        assert reader.codec == "deflate"
        back = list(reader)
    assert same(back, dicts(*args))
    for record in back:
        assert validate(record, alert_schema(), raise_errors=True)
    again = ours(tmp_path, args, name="again.avro", sync_marker=SYNC, block_records=37)
    assert data == again


def test_header_is_fastavros(tmp_path):
    got = ours(tmp_path, random_visit(1, n=0), sync_marker=SYNC, codec="deflate")
    with io.BytesIO(got) as fo:
        assert list(fastavro.reader(fo)) == []
    expected = fastavro_bytes([], codec="deflate")
    assert got == expected
    assert json.loads(avro_alerts.schema_json())["name"] == "nightpipe.alert.Alert"


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_empty_visit_is_a_valid_file(tmp_path, codec):
    path = tmp_path / "empty.avro"
    empty = np.zeros(0, DIASOURCE_DTYPE)
    none = np.zeros(0, np.int64)
    assert (
        write_alert_file(
            path, empty, np.zeros(0, OBJECT_DTYPE), none, empty, none, none, codec=codec
        )
        == 0
    )
    assert read_alerts(path) == []
    assert path.read_bytes() == fastavro_bytes([], codec=codec)[:-16] + _name_sync(path)
    assert not list(tmp_path.glob(".*.tmp"))


def _name_sync(path: Path) -> bytes:
    return hashlib.blake2b(path.name.encode(), digest_size=16).digest()


def test_default_sync_marker_is_from_the_file_name(tmp_path):
    args = random_visit(2, n=20)
    (tmp_path / "a").mkdir()
    first = ours(tmp_path, args, name="visit_9.avro")
    second = ours(tmp_path / "a", args, name="visit_9.avro")
    assert first == second
    assert first.endswith(_name_sync(tmp_path / "visit_9.avro"))


def test_write_visit_alerts_matches_the_store_stage_path(tmp_path):
    rng = np.random.default_rng(9)
    objects = random_objects(rng, 30)
    objects["diaObjectId"] = np.sort(rng.choice(10**9, 30, replace=False)) + 1
    sources = random_sources(rng, 80)
    sources["diaObjectId"] = rng.choice(objects["diaObjectId"], 80)
    sources["diaObjectId"][:5] = 0  # no Object: null diaObject, and no prv
    sources["ssObjectId"] = np.where(rng.random(80) < 0.2, 7, 0)
    recent = random_sources(rng, 200)
    recent["diaObjectId"] = rng.choice(objects["diaObjectId"][:20], 200)
    recent = recent[np.lexsort((recent["midpointMjdTai"], recent["diaObjectId"]))]

    alerting = sources[sources["ssObjectId"] == 0]
    ids = alerting["diaObjectId"]
    at = np.searchsorted(objects["diaObjectId"], ids)
    lo = np.searchsorted(recent["diaObjectId"], ids, side="left")
    hi = np.searchsorted(recent["diaObjectId"], ids, side="right")
    expected = dicts(alerting, objects, np.where(ids == 0, -1, at), recent, lo, hi)

    path = tmp_path / "visit_3.avro"
    assert write_visit_alerts(path, sources, objects, recent) == len(alerting)
    back = read_alerts(path)
    assert same(back, expected)
    assert [r["alertId"] for r in back] == alerting["diaSourceId"].tolist()
    assert sum(r["diaObject"] is None for r in back) == int((ids == 0).sum()) > 0
    assert any(len(r["prvDiaSources"]) > 1 for r in back)


def test_bad_arguments_are_refused(tmp_path):
    sources, objects, obj_index, prv, lo, hi = random_visit(4, n=10)
    path = tmp_path / "x.avro"
    bad_band = sources.copy()
    bad_band["band"][3] = NBANDS
    cases = [
        ((sources, objects, obj_index + len(objects), prv, lo, hi), {}),
        ((sources, objects, obj_index, prv, lo, hi + len(prv)), {}),
        ((sources, objects, obj_index, prv, hi + 1, hi), {}),
        ((sources, objects, obj_index[:5], prv, lo, hi), {}),
        ((bad_band, objects, obj_index, prv, lo, hi), {}),
        ((sources, objects, obj_index, prv, lo, hi), {"codec": "snappy"}),
        ((sources, objects, obj_index, prv, lo, hi), {"sync_marker": b"short"}),
    ]
    for args, kw in cases:
        with pytest.raises(ValueError):
            write_alert_file(path, *args, **kw)
    assert not path.exists()


def test_warm_up_runs():
    avro_alerts.warm_up()


def test_a_changed_schema_is_refused(tmp_path, monkeypatch):
    schema = json.loads(avro_alerts.SCHEMA_PATH.read_text())
    schema["fields"][1]["type"]["fields"][3]["type"] = "float"  # ra: double -> float
    changed = tmp_path / "alert.avsc"
    changed.write_text(json.dumps(schema))
    monkeypatch.setattr(avro_alerts, "SCHEMA_PATH", changed)
    avro_alerts.schema_json.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="changed"):
            avro_alerts.schema_json()
    finally:
        avro_alerts.schema_json.cache_clear()


# Property test: arbitrary bit patterns for every float, full integer ranges.
_i64 = st.integers(I64.min, I64.max)
_f4 = st.integers(0, 2**32 - 1)
_f8 = st.integers(0, 2**64 - 1)
_source = st.tuples(_i64, _i64, st.one_of(st.just(0), _i64), _f8, _f8, _f4, _f4, _f8)
_source = st.tuples(_source, st.integers(-NBANDS, NBANDS - 1), _f4, _f4, _f4)
_object = st.tuples(
    _i64,
    _f8,
    _f8,
    st.integers(-(2**31), 2**31 - 1),
    _f8,
    _f8,
    st.booleans(),
    st.lists(st.integers(-2, 2**15 - 1) | st.integers(0, 2), min_size=NBANDS, max_size=NBANDS),
    st.lists(_f4, min_size=NBANDS, max_size=NBANDS),
    st.lists(_f4, min_size=NBANDS, max_size=NBANDS),
)


def _source_rows(values: list) -> np.ndarray:
    out = np.zeros(len(values), DIASOURCE_DTYPE)
    for i, ((a, b, c, ra, dec, ra_err, dec_err, mjd), band, flux, flux_err, snr) in enumerate(
        values
    ):
        for name, value in (("diaSourceId", a), ("visit", b), ("diaObjectId", c), ("band", band)):
            out[name][i] = value
        for name, bits in (("ra", ra), ("dec", dec), ("midpointMjdTai", mjd)):
            out[name][i : i + 1].view(np.uint64)[0] = bits
        for name, bits in (
            ("raErr", ra_err),
            ("decErr", dec_err),
            ("psfFlux", flux),
            ("psfFluxErr", flux_err),
            ("snr", snr),
        ):
            out[name][i : i + 1].view(np.uint32)[0] = bits
    return out


def _object_rows(values: list) -> np.ndarray:
    out = np.zeros(len(values), OBJECT_DTYPE)
    for i, (oid, ra, dec, n_src, first, last, var, ndata, mean, m2) in enumerate(values):
        for name, value in (("diaObjectId", oid), ("nDiaSources", n_src), ("isVariable", var)):
            out[name][i] = value
        for name, bits in (("ra", ra), ("dec", dec), ("firstMjd", first), ("lastMjd", last)):
            out[name][i : i + 1].view(np.uint64)[0] = bits
        out["psfFluxNdata"][i] = ndata
        out["psfFluxMean"][i] = np.array(mean, np.uint32).view(np.float32)
        out["psfFluxM2"][i] = np.array(m2, np.uint32).view(np.float32)
    return out


@st.composite
def visits(draw) -> tuple:
    sources = _source_rows(draw(st.lists(_source, max_size=6)))
    objects = _object_rows(draw(st.lists(_object, max_size=4)))
    prv = _source_rows(draw(st.lists(_source, max_size=12)))
    n = len(sources)
    obj_index = draw(st.lists(st.integers(-1, len(objects) - 1), min_size=n, max_size=n))
    bounds = draw(
        st.lists(st.lists(st.integers(0, len(prv)), min_size=2, max_size=2), min_size=n, max_size=n)
    )
    lo = np.array([min(b) for b in bounds], np.int64)
    hi = np.array([max(b) for b in bounds], np.int64)
    return sources, objects, np.array(obj_index, np.int64), prv, lo, hi


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=visits(), sync_interval=st.integers(1, 3000))
def test_property_bytes_equal_fastavro(tmp_path_factory, args, sync_interval):
    tmp = tmp_path_factory.mktemp("prop")
    expected = fastavro_bytes(dicts(*args), sync_interval=sync_interval)
    got = ours(tmp, args, sync_marker=SYNC, codec="null", sync_interval=sync_interval)
    assert got == expected
