"""Rubin's alert schema: the compiled encoder against fastavro, field by field, and the wire header."""

from __future__ import annotations

import io
import math
from pathlib import Path

import fastavro
import numpy as np
import pytest
from fastavro.validation import validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from association.alerts import rubin_schema, schemaless
from association.alerts.rubin import REQUIRED_FILLS, MovingMatches, RubinAlertEncoder
from association.alerts.wire import WireFormatError, confluent_header, frame, unframe
from association.columns import BANDS, DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE
from association.inputs.readers import PREDICTION_DTYPE
from tests.alertdata import make_visit

MJD = 60500.5


def fastavro_bytes(schema: dict, record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def same(a, b) -> bool:
    """Equal decoded values, NaN equal to NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


@pytest.fixture(scope="module")
def encoder() -> RubinAlertEncoder:
    return RubinAlertEncoder()


@pytest.fixture(scope="module")
def visit():
    return make_visit()


def by_id(records: list[dict]) -> dict[int, dict]:
    return {r["diaSourceId"]: r for r in records}


# --- the schema package --------------------------------------------------------------


def test_latest_version_is_the_packages_and_v11():
    latest = rubin_schema.latest_version()
    text = (rubin_schema.schema_root() / "latest.txt").read_text().strip()
    assert latest == text
    assert int(latest.split(".")[0]) >= 11
    assert latest in rubin_schema.available_versions()
    schema = rubin_schema.load_alert_schema()
    assert schema["name"] == f"lsst.v{latest.replace('.', '_')}.alert"


def test_schema_ids():
    assert rubin_schema.schema_id("11.1") == 1101
    assert rubin_schema.schema_id("11.0") == 1100
    assert rubin_schema.schema_id("9.0") == 900
    assert rubin_schema.version_of_id(1101) == "11.1"
    with pytest.raises(ValueError, match=r"MAJOR\.MINOR"):
        rubin_schema.parse_version("v11")


def test_unknown_version_names_those_available():
    with pytest.raises(rubin_schema.SchemaNotFound, match=r"11\.1"):
        RubinAlertEncoder("99.0")


# --- bytes: compiled encoder = fastavro ---------------------------------------------


@pytest.mark.parametrize("version", ["10.0", "11.0", "11.1"])
def test_encoder_bytes_equal_fastavro(version, visit):
    enc = RubinAlertEncoder(version)
    sources, objects, recent, moving = visit
    out = enc.encode(sources, objects, recent, moving, processed_mjd=MJD, exposure_time=30.0)
    recs = enc.records(sources, objects, recent, moving, processed_mjd=MJD, exposure_time=30.0)
    assert len(out) == len(recs) == len(sources)
    for i, rec in enumerate(recs):
        assert validate(rec, enc.schema)
        assert out.payload(i) == fastavro_bytes(enc.schema, rec)
        assert out.message(i)[:5] == confluent_header(enc.schema_id)
    assert out.messages() == [out.message(i) for i in range(len(out))]


def test_records_decode_back(encoder, visit):
    sources, objects, recent, moving = visit
    out = encoder.encode(sources, objects, recent, moving, processed_mjd=MJD)
    recs = encoder.records(sources, objects, recent, moving, processed_mjd=MJD)
    for i, rec in enumerate(recs):
        sid, payload = unframe(out.message(i))
        assert sid == encoder.schema_id
        back = fastavro.schemaless_reader(io.BytesIO(payload), encoder.schema, None)
        assert same(back, rec)


def _random_visit(data, n: int):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    i64 = np.iinfo(np.int64)
    f4_special = np.array(
        [0x7FC00000, 0xFFC00000, 0x7F800001, 0x7F800000, 0xFF800000, 0x80000000], np.uint32
    ).view(np.float32)

    def floats(k, dtype):
        out = rng.normal(0, 1e4, k).astype(dtype)
        pick = rng.random(k) < 0.3
        with np.errstate(invalid="ignore"):  # a signalling NaN widened to float64
            out[pick] = rng.choice(f4_special, int(pick.sum())).astype(dtype)
        return out

    def sources(k, obj_ids):
        s = np.zeros(k, DIASOURCE_DTYPE)
        s["diaSourceId"] = rng.integers(i64.min, i64.max, k, endpoint=True)
        s["visit"] = rng.integers(-(2**40), 2**40, k)
        s["diaObjectId"] = obj_ids
        for name in ("ra", "dec", "midpointMjdTai"):
            s[name] = floats(k, np.float64)
        for name in ("raErr", "decErr", "psfFlux", "psfFluxErr", "snr"):
            s[name] = floats(k, np.float32)
        s["band"] = rng.integers(0, NBANDS, k)
        return s

    n_obj = data.draw(st.integers(0, n))
    obj_ids = np.sort(rng.choice(np.arange(1, 10 * n + 2), n_obj, replace=False))
    objects = np.zeros(n_obj, OBJECT_DTYPE)
    objects["diaObjectId"] = obj_ids
    for name in ("ra", "dec", "firstMjd", "lastMjd"):
        objects[name] = floats(n_obj, np.float64)
    objects["nDiaSources"] = rng.integers(0, 2**31 - 1, n_obj)
    objects["psfFluxNdata"] = rng.integers(-1, 5, (n_obj, NBANDS))
    objects["psfFluxMean"] = floats(n_obj * NBANDS, np.float32).reshape(n_obj, NBANDS)
    for name in ("psfFluxM2", "psfFluxWMean", "psfFluxMeanErr", "psfFluxChi2"):
        objects[name] = floats(n_obj * NBANDS, np.float32).reshape(n_obj, NBANDS)
    for name in ("raErr", "decErr"):
        objects[name] = floats(n_obj, np.float32)

    pool = np.concatenate((obj_ids, [0, 10 * n + 5]))  # some without Object or row
    src = sources(n, rng.choice(pool, n) if n else np.zeros(0, np.int64))
    moving = rng.random(n) < 0.3
    src["ssObjectId"] = np.where(moving, rng.integers(1, i64.max, n), 0)
    m = int(moving.sum())
    pred = np.zeros(m, PREDICTION_DTYPE)
    pred["ssObjectId"] = src["ssObjectId"][moving]
    pred["ra"] = rng.uniform(0, 360, m)
    pred["dec"] = rng.uniform(-90, 90, m)
    pred["predictedMag"] = floats(m, np.float32)
    n_prv = data.draw(st.integers(0, 3 * n))
    recent = sources(n_prv, rng.choice(pool, n_prv) if n_prv else np.zeros(0, np.int64))
    recent = recent[np.argsort(recent["diaObjectId"], kind="stable")]
    matches = MovingMatches(src["diaSourceId"][moving], pred)
    return src, objects, recent, matches


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(0, 12))
def test_property_bytes_equal_fastavro(data, n):
    """Random visits, extreme ids, NaN/inf/signalling NaN floats: same bytes as fastavro."""
    enc = RubinAlertEncoder()
    src, objects, recent, moving = _random_visit(data, n)
    exposure = data.draw(st.none() | st.floats(0, 100, width=32))
    out = enc.encode(src, objects, recent, moving, processed_mjd=MJD, exposure_time=exposure)
    recs = enc.records(src, objects, recent, moving, processed_mjd=MJD, exposure_time=exposure)
    assert len(out) == n
    for i, rec in enumerate(recs):
        assert out.payload(i) == fastavro_bytes(enc.schema, rec)
    assert out.unframed().data == b"".join(out.payload(i) for i in range(n))


# --- fields ---------------------------------------------------------------------------


def test_object_alert_fields(encoder, visit):
    sources, objects, recent, moving = visit
    recs = by_id(encoder.records(sources, objects, recent, moving, processed_mjd=MJD))
    obj_rows = {int(o["diaObjectId"]): o for o in objects}
    checked_history = checked_no_history = 0
    for s in sources[sources["ssObjectId"] == 0]:
        rec = recs[int(s["diaSourceId"])]
        src = rec["diaSource"]
        assert src["diaSourceId"] == rec["diaSourceId"] == s["diaSourceId"]
        assert src["band"] == BANDS[s["band"]]
        assert src["ra"] == s["ra"] and src["visit"] == s["visit"]
        assert src["ssObjectId"] is None and src["diaObjectId"] == s["diaObjectId"]
        assert (src["snr"] is None) == bool(np.isnan(s["snr"]))
        assert src["timeProcessedMjdTai"] == MJD
        assert src["detector"] == -1 and math.isnan(src["x"]) and src["bboxSize"] == 0
        assert rec["ssSource"] is None
        assert rec["prvDiaForcedSources"] == []
        assert rec["cutoutDifference"] is rec["cutoutScience"] is rec["cutoutTemplate"] is None
        assert rec["mpc_orbits"] is None and rec["observation_reason"] is None
        prv = recent[recent["diaObjectId"] == s["diaObjectId"]]
        if len(prv):
            checked_history += 1
            assert [p["diaSourceId"] for p in rec["prvDiaSources"]] == prv["diaSourceId"].tolist()
            assert all(math.isnan(p["timeProcessedMjdTai"]) for p in rec["prvDiaSources"])
            assert all(p["raErr"] is None for p in rec["prvDiaSources"])
        else:
            checked_no_history += 1
            assert rec["prvDiaSources"] is None
        row = obj_rows.get(int(s["diaObjectId"]))
        if row is None:
            assert rec["diaObject"] is None
            continue
        obj = rec["diaObject"]
        assert obj["diaObjectId"] == row["diaObjectId"]
        assert obj["nDiaSources"] == row["nDiaSources"]
        assert obj["validityStartMjdTai"] == MJD
        assert obj["firstDiaSourceMjdTai"] == row["firstMjd"]
        for name in ("raErr", "decErr"):
            value = float(row[name])
            assert obj[name] is None if math.isnan(value) else obj[name] == value
        for b, band in enumerate(BANDS):
            n = int(row["psfFluxNdata"][b])
            assert obj[f"{band}_psfFluxNdata"] == n
            err = float(row["psfFluxMeanErr"][b])
            weighted = err > 0 and math.isfinite(err)
            mean = row["psfFluxWMean" if weighted else "psfFluxMean"][b]
            if n == 0 or math.isnan(mean):
                assert obj[f"{band}_psfFluxMean"] is None
            else:
                assert obj[f"{band}_psfFluxMean"] == float(mean)
            assert obj[f"{band}_psfFluxMeanErr"] == (err if weighted else None)
            if n < 2:
                assert obj[f"{band}_psfFluxSigma"] is None
            else:
                want = math.sqrt(float(row["psfFluxM2"][b]) / (n - 1))
                assert obj[f"{band}_psfFluxSigma"] == pytest.approx(want, rel=1e-6)
    assert checked_history and checked_no_history
    assert sum(r["diaObject"] is None and r["ssSource"] is None for r in recs.values())


def test_moving_alert_fields(encoder, visit):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    sources, objects, recent, moving = visit
    recs = by_id(encoder.records(sources, objects, recent, moving, processed_mjd=MJD))
    preds = {int(i): p for i, p in zip(moving.dia_source_id, moving.predictions, strict=True)}
    assert len(preds) == int((sources["ssObjectId"] != 0).sum()) > 0
    for s in sources[sources["ssObjectId"] != 0]:
        rec = recs[int(s["diaSourceId"])]
        p = preds[int(s["diaSourceId"])]
        assert rec["diaObject"] is None and rec["prvDiaSources"] is None
        assert rec["diaSource"]["ssObjectId"] == s["ssObjectId"]
        assert rec["diaSource"]["diaObjectId"] is None
        ss = rec["ssSource"]
        assert ss["diaSourceId"] == s["diaSourceId"] and ss["ssObjectId"] == p["ssObjectId"]
        assert ss["ephRa"] == p["ra"] and ss["ephDec"] == p["dec"]
        assert (ss["ephVmag"] is None) == bool(np.isnan(p["predictedMag"]))
        obs = SkyCoord(s["ra"] * u.deg, s["dec"] * u.deg)
        pred = SkyCoord(p["ra"] * u.deg, p["dec"] * u.deg)
        assert ss["ephOffset"] == pytest.approx(obs.separation(pred).arcsec, rel=1e-5)
        d_ra = (s["ra"] - p["ra"] + 180) % 360 - 180
        assert ss["ephOffsetRa"] == pytest.approx(d_ra * math.cos(math.radians(p["dec"])) * 3600)
        assert ss["ephOffsetDec"] == pytest.approx((s["dec"] - p["dec"]) * 3600)
        gal = obs.galactic
        ecl = obs.transform_to("barycentricmeanecliptic")
        assert ss["galLon"] == pytest.approx(gal.l.deg, abs=1e-9)
        assert ss["galLat"] == pytest.approx(gal.b.deg, abs=1e-9)
        assert ss["eclLambda"] == pytest.approx(ecl.lon.deg, abs=1e-9)
        assert ss["eclBeta"] == pytest.approx(ecl.lat.deg, abs=1e-9)
        assert ss["diaDistanceRank"] is None and ss["designation"] is None


def test_fills_apply_only_to_required_fields(encoder):
    """Every fill names a required field of the schema; everything else unknown is null."""
    from association.alerts.rubin import _record_schemas

    records = _record_schemas(encoder.schema)
    for table, fills in REQUIRED_FILLS.items():
        fields = {f["name"]: f["type"] for f in records[table]["fields"]}
        for name in fills:
            assert name in fields and not isinstance(fields[name], list), (table, name)


def test_exposure_time_passed_when_known(encoder, visit):
    sources, objects, recent, moving = visit
    with_exp = encoder.records(sources, objects, recent, moving, exposure_time=30.0)
    without = encoder.records(sources, objects, recent, moving)
    assert {r["diaSource"]["exposureTime"] for r in with_exp} == {30.0}
    assert {r["diaSource"]["exposureTime"] for r in without} == {None}
    assert all(r["diaSource"]["timeProcessedMjdTai"] > 60000 for r in without)  # now


def test_empty_visit(encoder):
    rows = np.zeros(0, DIASOURCE_DTYPE)
    out = encoder.encode(rows, np.zeros(0, OBJECT_DTYPE), rows, processed_mjd=MJD)
    assert len(out) == 0 and out.data == b"" and out.messages() == []


# --- errors ---------------------------------------------------------------------------


def test_moving_match_without_prediction_is_named(encoder, visit):
    sources, objects, recent, _ = visit
    missing = int(sources["diaSourceId"][sources["ssObjectId"] != 0][0])
    with pytest.raises(ValueError, match=f"diaSource {missing} .*no prediction"):
        encoder.encode(sources, objects, recent, MovingMatches.none(), processed_mjd=MJD)


def test_unsorted_objects_refused(encoder, visit):
    sources, objects, recent, moving = visit
    with pytest.raises(ValueError, match="objects: not sorted by diaObjectId"):
        encoder.encode(sources, objects[::-1], recent, moving, processed_mjd=MJD)


def test_missing_column_refused(encoder, visit):
    sources, objects, recent, moving = visit
    slim = sources[[n for n in DIASOURCE_DTYPE.names if n != "band"]]
    with pytest.raises(ValueError, match=r"sources: missing columns \['band'\]"):
        encoder.encode(slim, objects, recent, moving, processed_mjd=MJD)


def test_bad_band_named(encoder, visit):
    sources, objects, recent, moving = visit
    bad = sources.copy()
    bad["band"][3] = NBANDS
    with pytest.raises(ValueError, match=r"diaSource\.band: row 3"):
        encoder.encode(bad, objects, recent, moving, processed_mjd=MJD)


def test_int_overflow_named(encoder, visit):
    sources, objects, recent, moving = visit
    big = objects.copy()
    big["psfFluxNdata"] = 0
    tables = encoder.tables(sources, big, recent, moving, processed_mjd=MJD)
    fields = dict(tables["diaObject"].fields)
    fields["nDiaSources"] = schemaless.Column(np.full(len(big), 2**40))
    tables["diaObject"] = schemaless.Table(len(big), fields)
    with pytest.raises(
        ValueError, match=r"diaObject\.nDiaSources: row 0: .* does not fit an Avro int"
    ):
        schemaless.encode(encoder._plan(tables), tables)


def test_required_field_without_column_named(encoder):
    tables = {"alert": schemaless.Table(1, {"diaSourceId": schemaless.Column(np.ones(1, int))})}
    with pytest.raises(ValueError, match=r"alert\.diaSource \(table 'alert'\) is required"):
        schemaless.compile_plan(encoder.schema, "alert", tables)


# --- wire format and files ------------------------------------------------------------


def test_confluent_header():
    assert confluent_header(1101) == b"\x00\x00\x00\x04\x4d"
    sid, payload = unframe(frame(1101, b"abc"))
    assert sid == 1101 and bytes(payload) == b"abc"
    with pytest.raises(WireFormatError, match="magic byte is 1"):
        unframe(b"\x01\x00\x00\x04\x4dabc")
    with pytest.raises(WireFormatError, match="shorter than the 5-byte header"):
        unframe(b"\x00\x00")


def test_rubin_container_file(encoder, visit, tmp_path: Path):
    sources, objects, recent, moving = visit
    out = encoder.encode(sources, objects, recent, moving, processed_mjd=MJD)
    recs = encoder.records(sources, objects, recent, moving, processed_mjd=MJD)
    path = tmp_path / "visit.avro"
    assert encoder.write_file(path, out) == len(recs)
    with path.open("rb") as fo:
        reader = fastavro.reader(fo)
        assert reader.writer_schema["name"] == encoder.schema["name"]
        back = list(reader)
    assert same(back, recs)
    ref = tmp_path / "ref.avro"
    with ref.open("wb") as fo:
        fastavro.writer(fo, encoder.schema, recs, codec="null", sync_marker=b"\x00" * 16)
    mine = tmp_path / "mine.avro"
    encoder.write_file(mine, out, codec="null")
    with mine.open("rb") as a, ref.open("rb") as b:
        ha, hb = fastavro.reader(a).metadata, fastavro.reader(b).metadata
    assert ha["avro.schema"] == hb["avro.schema"]
