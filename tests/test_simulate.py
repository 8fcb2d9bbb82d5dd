"""The night simulator and the OpSim reader: reproducible, and the truth holds."""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import SkyCoord

from association.columns import BANDS
from association.nights.opsim import BUNDLED_DB, nights, read_cadence
from association.nights.simulate import SOURCE_ID_BASE, SimConfig, simulate
from events.archive import Archive

NIGHT = 60217.5
# Around the south pole: 18 visits of the first night, fields on both sides of RA 0,
# most visited several times hours apart.
POLE = (0.0, -87.0, 4.0)


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        root = tmp_path_factory.mktemp(name)
        simulate(BUNDLED_DB, root / "night", NIGHT, SimConfig(seed=seed), region=POLE)
        out[name] = root / "night"
    return out


@pytest.fixture(scope="module")
def night(sims: dict[str, Path]) -> dict:
    root = sims["a"]
    archive = Archive(root)
    visits = read_cadence(BUNDLED_DB, NIGHT, region=POLE)
    src = {}
    for v in visits["observationId"]:
        t = pq.read_table(root / f"data/visit_{v}_diasources.parquet")
        src[int(v)] = t.append_column("visit", pa.array(np.full(len(t), v, dtype="i8")))
    return {
        "root": root,
        "archive": archive,
        "visits": visits,
        "src": pa.concat_tables(src.values()),
        "truth": pq.read_table(root / "truth/diasources.parquet"),
        "objects": pq.read_table(root / "catalogue/objects.parquet"),
        "history": pq.read_table(root / "catalogue/diasources.parquet"),
        "movers": pq.read_table(root / "truth/movers.parquet"),
    }


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _sky(ra: np.ndarray, dec: np.ndarray) -> SkyCoord:
    return SkyCoord(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg)


def _joined(night: dict) -> dict[str, np.ndarray]:
    """Every DIASource of the night with its truth, as numpy columns."""
    src, truth = night["src"], night["truth"]
    order = np.argsort(truth["diaSourceId"].to_numpy())
    at = order[
        np.searchsorted(
            truth["diaSourceId"].to_numpy(), src["diaSourceId"].to_numpy(), sorter=order
        )
    ]
    out = {c: src[c].to_numpy() for c in src.column_names if c != "band"}
    for c in ("kind", "diaObjectId", "ssObjectId", "transientId", "predicted"):
        out[c] = np.asarray(truth[c].to_numpy(zero_copy_only=False))[at]
    out["truth_visit"] = truth["visit"].to_numpy()[at]
    return out


def test_opsim_nights() -> None:
    assert nights(BUNDLED_DB) == [
        (60217.5, 848),
        (60218.5, 868),
        (60219.5, 248),
        (60220.5, 866),
        (60221.5, 856),
    ]
    for start, n in nights(BUNDLED_DB):
        v = read_cadence(BUNDLED_DB, start)
        assert len(v) == n
        assert np.all(np.diff(v["observationStartMJD"]) > 0)
        assert np.all((v["observationStartMJD"] >= start) & (v["observationStartMJD"] < start + 1))
    assert len(read_cadence(BUNDLED_DB)) == 3686
    assert len(read_cadence(BUNDLED_DB, NIGHT, max_visits=5)) == 5
    pole = read_cadence(BUNDLED_DB, NIGHT, region=POLE)
    assert len(pole) == 18
    assert np.all(_sky(pole["fieldRA"], pole["fieldDec"]).separation(_sky(0.0, -87.0)).deg <= 4)
    with pytest.raises(ValueError, match="night start"):
        read_cadence(BUNDLED_DB, 60218.0)


def _same_table(x, y) -> bool:
    """Equal schemas and columns, a NaN equal to a NaN (no data in a band)."""
    if not x.schema.equals(y.schema):
        return False
    for name in x.column_names:
        u = x.column(name).to_numpy(zero_copy_only=False)
        v = y.column(name).to_numpy(zero_copy_only=False)
        if not np.array_equal(u, v, equal_nan=u.dtype.kind == "f"):
            return False
    return True


def test_same_seed_same_archive(sims: dict[str, Path]) -> None:
    a, b = sims["a"], sims["b"]
    assert _files(a) == _files(b)
    assert (a / "events.jsonl").read_bytes() == (b / "events.jsonl").read_bytes()
    for rel in _files(a):
        if rel.endswith(".parquet"):
            assert _same_table(pq.read_table(a / rel), pq.read_table(b / rel)), rel
    ma, mb = Archive(a).manifest, Archive(b).manifest
    assert ma["counts"] == mb["counts"] and ma["source"] == mb["source"]


def test_other_seed_other_archive(sims: dict[str, Path]) -> None:
    a, c = sims["a"], sims["c"]
    assert (a / "events.jsonl").read_bytes() != (c / "events.jsonl").read_bytes()
    for rel in ("catalogue/objects.parquet", "data/visit_54_diasources.parquet"):
        assert not pq.read_table(a / rel).equals(pq.read_table(c / rel))


def test_truth_covers_every_source_once(night: dict) -> None:
    src, truth = night["src"], night["truth"]
    ids = src["diaSourceId"].to_numpy()
    assert len(np.unique(ids)) == len(ids) and np.all(ids > SOURCE_ID_BASE)
    tid = truth["diaSourceId"].to_numpy()
    assert len(np.unique(tid)) == len(tid) == len(ids)
    assert set(tid.tolist()) == set(ids.tolist())
    j = _joined(night)
    assert np.array_equal(j["truth_visit"], j["visit"])
    counts = night["archive"].manifest["counts"]
    assert counts["diasources"] == len(ids)
    kinds = {k: int((j["kind"] == k).sum()) for k in counts["diasources_by_kind"]}
    assert kinds == counts["diasources_by_kind"]
    assert kinds["variable"] > 1000 and kinds["mover"] > 20 and kinds["transient"] > 5
    assert kinds["spurious"] > 50 and kinds["static"] > 0  # p_detect_static: rare
    assert np.all(np.isin(j["kind"], ["variable", "static", "transient", "mover", "spurious"]))
    cat = np.isin(j["kind"], ["variable", "static"])
    assert np.all(j["diaObjectId"][cat] > 0) and np.all(j["diaObjectId"][~cat] == 0)
    assert np.all((j["ssObjectId"] > 0) == (j["kind"] == "mover"))
    assert np.all((j["transientId"] > 0) == (j["kind"] == "transient"))
    assert not np.any(j["predicted"][j["kind"] != "mover"])


def test_catalogue(night: dict) -> None:
    obj, hist = night["objects"], night["history"]
    oid = obj["diaObjectId"].to_numpy()
    assert np.all((oid > 0) & (oid < 2**40)) and len(np.unique(oid)) == len(oid)
    hid = hist["diaSourceId"].to_numpy()
    assert np.all((hid > 0) & (hid < 2**40)) and len(np.unique(hid)) == len(hid)
    assert set(hist["band"].to_pylist()) <= set(BANDS)
    # Each Object was created by its first DIASource, and counts them all.
    n = np.bincount(np.searchsorted(oid, hist["diaObjectId"].to_numpy()), minlength=len(oid))
    assert np.all(np.diff(oid) > 0)
    assert np.array_equal(n, obj["nDiaSources"].to_numpy())
    var = obj["isVariable"].to_numpy()
    assert np.all(n[~var] == 1) and np.all(n[var] >= 3)
    assert 0.08 < var.mean() < 0.12
    creator = np.searchsorted(hid, oid)
    assert np.array_equal(hid[creator], oid)
    assert np.array_equal(hist["fine"].to_numpy()[creator], obj["fine"].to_numpy())
    ra, dec = hist["ra"].to_numpy(), hist["dec"].to_numpy()
    assert np.array_equal(
        hp.ang2pix(2**20, ra, dec, nest=True, lonlat=True), hist["fine"].to_numpy()
    )
    # Welford statistics per band agree with the Object's DIASources.
    owner = np.searchsorted(oid, hist["diaObjectId"].to_numpy())
    band = np.array([BANDS.index(b) for b in hist["band"].to_pylist()])
    flux = hist["psfFlux"].to_numpy().astype("f8")
    for i, b in enumerate(BANDS):
        sel = band == i
        cnt = np.bincount(owner[sel], minlength=len(oid))
        mean = np.bincount(owner[sel], flux[sel], minlength=len(oid)) / np.maximum(cnt, 1)
        m2 = np.bincount(owner[sel], (flux[sel] - mean[owner[sel]]) ** 2, minlength=len(oid))
        assert np.array_equal(obj[f"{b}_psfFluxNdata"].to_numpy(), cnt)
        np.testing.assert_allclose(obj[f"{b}_psfFluxMean"].to_numpy(), mean, rtol=1e-5)
        np.testing.assert_allclose(obj[f"{b}_psfFluxM2"].to_numpy(), m2, rtol=1e-4, atol=1e-3)
    mjd = hist["midpointMjdTai"].to_numpy()
    assert np.all(mjd < NIGHT)
    np.testing.assert_array_equal(obj["firstMjd"].to_numpy(), mjd[creator])


def test_catalogue_sources_near_their_object(night: dict) -> None:
    j = _joined(night)
    obj = night["objects"]
    oid = obj["diaObjectId"].to_numpy()
    sel = j["diaObjectId"] > 0
    at = np.searchsorted(oid, j["diaObjectId"][sel])
    assert np.array_equal(oid[at], j["diaObjectId"][sel])
    sep = _sky(j["ra"][sel], j["dec"][sel]).separation(
        _sky(obj["ra"].to_numpy()[at], obj["dec"].to_numpy()[at])
    )
    assert np.all(sep.arcsec < 1.0)
    sigma = j["raErr"][sel] * 3600
    assert np.all(sep.arcsec < 6 * np.hypot(sigma, 0.05))


def test_sources_inside_their_fov(night: dict) -> None:
    j = _joined(night)
    v = night["visits"]
    at = np.searchsorted(v["observationId"], j["visit"])
    centre = _sky(v["fieldRA"][at], v["fieldDec"][at])
    assert np.all(centre.separation(_sky(j["ra"], j["dec"])).deg < 1.75 + 1 / 3600)
    assert np.all((j["ra"] >= 0) & (j["ra"] < 360))
    assert np.ptp(j["ra"]) > 300  # the region straddles RA 0


def test_movers_on_their_track(night: dict) -> None:
    j = _joined(night)
    mv = night["movers"]
    sel = j["kind"] == "mover"
    at = np.searchsorted(mv["ssObjectId"].to_numpy(), j["ssObjectId"][sel])
    dt = j["midpointMjdTai"][sel] - mv["mjd0"].to_numpy()[at]
    dist = mv["rate"].to_numpy()[at] * dt
    pa_ = mv["direction"].to_numpy()[at] + np.where(dist < 0, 180.0, 0.0)
    start = _sky(mv["ra"].to_numpy()[at], mv["dec"].to_numpy()[at])
    track = start.directional_offset_by(pa_ * u.deg, np.abs(dist) * u.deg)
    sep = track.separation(_sky(j["ra"][sel], j["dec"][sel])).arcsec
    assert np.all(sep < 6 * j["raErr"][sel] * 3600)
    assert np.any(np.abs(dist) > 0.1)


def test_predictions(night: dict) -> None:
    root = night["root"]
    j = _joined(night)
    parts = []
    for vid in night["visits"]["observationId"]:
        t = pq.read_table(root / f"data/visit_{vid}_predictions.parquet")
        parts.append(t.append_column("visit", pa.array(np.full(len(t), vid, dtype="i8"))))
    pred = pa.concat_tables(parts)
    flags = pq.read_table(root / "truth/predictions.parquet")
    assert flags["visit"].equals(pred["visit"]) and flags["ssObjectId"].equals(pred["ssObjectId"])
    right = flags["right"].to_numpy(zero_copy_only=False)
    assert 0 < (~right).sum() < 0.1 * right.size

    # Each detected mover against its prediction in the same visit, if any.
    key = pred["visit"].to_numpy() * 2**32 + pred["ssObjectId"].to_numpy()
    mv = np.flatnonzero(j["kind"] == "mover")
    mkey = j["visit"][mv] * 2**32 + j["ssObjectId"][mv]
    order = np.argsort(key)
    at = np.minimum(np.searchsorted(key, mkey, sorter=order), key.size - 1)
    found = key[order[at]] == mkey
    assert np.array_equal(j["predicted"][mv], found & right[order[at]])
    mv, p = mv[found], order[at][found]

    col = {c: pred[c].to_numpy()[p] for c in pred.column_names}
    assert np.allclose(col["mjd"], j["midpointMjdTai"][mv], atol=1e-9)
    east, north = _sky(col["ra"], col["dec"]).spherical_offsets_to(_sky(j["ra"][mv], j["dec"][mv]))
    d = np.stack([east.arcsec, north.arcsec], axis=-1)
    a, b = col["semiMajorAxis"].astype("f8"), col["semiMinorAxis"].astype("f8")
    t = np.radians(col["positionAngle"].astype("f8"))
    major = np.stack([np.sin(t), np.cos(t)], axis=-1)
    minor = np.stack([np.cos(t), -np.sin(t)], axis=-1)
    cov = a[:, None, None] ** 2 * major[:, :, None] * major[:, None, :]
    cov += b[:, None, None] ** 2 * minor[:, :, None] * minor[:, None, :]
    cov += np.eye(2) * (j["raErr"][mv].astype("f8") * 3600)[:, None, None] ** 2
    chi = np.sqrt(np.einsum("ni,ni->n", d, np.linalg.solve(cov, d[..., None])[..., 0]))
    ok = right[p]
    assert ok.sum() > 20 and (~ok).sum() > 0
    assert np.all(chi[ok] < 3)  # right: inside the 3-sigma ellipse (with the source's error)
    assert np.all(chi[~ok] > 10)  # wrong: far outside


def test_events(night: dict) -> None:
    archive, visits = night["archive"], night["visits"]
    events = archive.events()  # validated, in time order
    raw = archive.raw_events()
    assert len(events) == 3 * len(visits)
    times = [e.time for e in events]
    assert times == sorted(times)
    by = {(e.type, e.fov_id): e for e in events}
    assert all(not Path(p).is_absolute() for r in raw for p in r["body"].get("paths", []))
    for v in visits:
        vid = int(v["observationId"])
        start = (v["observationStartMJD"] - 40587) * 86400
        end = start + v["visitTime"]
        nv = by["telescope.next_visit", vid]
        det = by["detection.diasources_ready", vid]
        pred = by["nightmops.predictions_ready", vid]
        assert nv.id == f"telescope.next_visit-{vid}"
        assert start - 30 - 1e-3 <= nv.time <= start - 5 + 1e-3
        assert end + 30 - 1e-3 <= det.time <= end + 60 + 1e-3
        assert abs(pred.time - det.time) <= 20 + 1e-3
        assert nv.body["filter"] == v["filter"] and nv.body["radius"] == 1.75
        assert nv.body["mjd"] == v["observationStartMJD"]
        (path,) = det.body["paths"]
        assert Path(path).is_absolute() and Path(path).is_file()
        assert det.body["n_sources"] == pq.read_metadata(path).num_rows
        assert Path(pred.body["paths"][0]).is_file()


def test_opsim_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such OpSim database"):
        read_cadence(tmp_path / "none.db")
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(ValueError, match="no 'observations' table"):
        read_cadence(tmp_path / "empty.db")


def test_config_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variable_fraction"):
        SimConfig(variable_fraction=1.5)
    with pytest.raises(ValueError, match="ellipse_axis_ratio"):
        SimConfig(ellipse_axis_ratio=(1.0, 0.2))
    with pytest.raises(ValueError, match="no visits"):
        simulate(BUNDLED_DB, tmp_path / "n", NIGHT, region=(0.0, 80.0, 1.0))
    assert SimConfig(snr_range=[5.0, 50.0]).to_dict()["snr_range"] == [5.0, 50.0]


def test_back_to_back_pairs(tmp_path: Path) -> None:
    """With pair_gap_s every visit has a twin 80 s later; same seed, same bytes."""
    from association.nights.simulate import PAIR_ID_OFFSET

    cfg = SimConfig(seed=3, pair_gap_s=80.0, movers_per_deg2=40.0)
    a = simulate(BUNDLED_DB, tmp_path / "a", NIGHT, cfg, region=POLE, max_visits=4)
    simulate(BUNDLED_DB, tmp_path / "b", NIGHT, cfg, region=POLE, max_visits=4)
    assert a["counts"]["visits"] == 8
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    for rel in _files(tmp_path / "a"):
        if rel != "manifest.json":  # it holds its creation time
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    starts = {}
    for ev in Archive(tmp_path / "a").events():
        if ev.type == "telescope.next_visit":
            starts[ev.fov_id] = ev.body
    firsts = [v for v in starts if v < PAIR_ID_OFFSET]
    assert len(firsts) == 4
    for v in firsts:
        twin = starts[v + PAIR_ID_OFFSET]
        assert (twin["ra"], twin["dec"], twin["filter"]) == (
            starts[v]["ra"],
            starts[v]["dec"],
            starts[v]["filter"],
        )
        assert (twin["mjd"] - starts[v]["mjd"]) * 86400 == pytest.approx(80.0, abs=1e-3)
    # a mover seen in both exposures of a pair moved rate * 80 s between them
    truth = pq.read_table(tmp_path / "a" / "truth/diasources.parquet")
    is_mover = truth["kind"].to_numpy(zero_copy_only=False) == "mover"
    ids, ss = truth["diaSourceId"].to_numpy()[is_mover], truth["ssObjectId"].to_numpy()[is_mover]
    ss_of = dict(zip(ids, ss, strict=True))
    movers = pq.read_table(tmp_path / "a" / "truth/movers.parquet")
    rate = dict(zip(movers["ssObjectId"].to_numpy(), movers["rate"].to_numpy(), strict=True))
    pos = {}
    for v in starts:
        t = pq.read_table(tmp_path / "a" / f"data/visit_{v}_diasources.parquet")
        for sid, ra, dec in zip(
            *(t[c].to_numpy() for c in ("diaSourceId", "ra", "dec")), strict=True
        ):
            if sid in ss_of:
                pos[(v % PAIR_ID_OFFSET, v >= PAIR_ID_OFFSET, ss_of[sid])] = (ra, dec)
    moved = [
        (_sky(*pos[(v, False, ss)]).separation(_sky(*pos[(v, True, ss)])).arcsec, rate[ss])
        for (v, twin, ss) in pos
        if not twin and (v, True, ss) in pos
    ]
    assert len(moved) >= 3
    for sep, r in moved:
        assert sep == pytest.approx(r * 3600 * 80 / 86400, abs=1.0)  # noise < 1"
