"""The Slice catalogue: statistics, recent DIASources, determinism, transactions, eviction."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest

from association.catalogue import Catalogue, CatalogueConfig, ChunkConflict
from association.columns import DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE

FINE_ORDER, CHUNK_ORDER = 8, 2
SHIFT = 2 * (FINE_ORDER - CHUNK_ORDER)
ALL_CHUNKS = np.arange(12 * 4**CHUNK_ORDER)
ARCSEC = 1 / 3600


def fine_of(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    return hp.ang2pix(2**FINE_ORDER, ra, dec, nest=True, lonlat=True)


def make_sources(
    ids: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    mjd: float | np.ndarray,
    rng: np.random.Generator,
    object_ids: np.ndarray | int = 0,
) -> np.ndarray:
    src = np.zeros(len(ids), DIASOURCE_DTYPE)
    src["diaSourceId"] = ids
    src["visit"] = 1
    src["diaObjectId"] = object_ids
    src["ra"] = np.mod(ra, 360.0)
    src["dec"] = dec
    src["midpointMjdTai"] = mjd
    src["band"] = rng.integers(0, NBANDS, len(ids))
    src["psfFlux"] = rng.normal(1000.0, 50.0, len(ids))
    src["psfFluxErr"] = rng.uniform(8.0, 12.0, len(ids))
    src["raErr"] = rng.uniform(0.05, 0.2, len(ids)) * ARCSEC
    src["decErr"] = rng.uniform(0.05, 0.2, len(ids)) * ARCSEC
    src["fine"] = fine_of(src["ra"], src["dec"])
    return src


def jitter(ra: np.ndarray, dec: np.ndarray, rng: np.random.Generator, sigma: float = ARCSEC):
    """Offset positions by a Gaussian of ``sigma`` degrees on the sphere (fine at the poles)."""
    v = hp.ang2vec(ra, dec, lonlat=True) + rng.normal(0, np.radians(sigma), (len(ra), 3))
    r, d = hp.vec2ang(v / np.linalg.norm(v, axis=1)[:, None], lonlat=True)
    return r, d


def empty_catalogue(chunks=ALL_CHUNKS, **config) -> Catalogue:
    cat = Catalogue(CatalogueConfig(**config), SHIFT)
    for c in chunks:
        cat.put(c, np.empty(0, OBJECT_DTYPE), np.empty(0, DIASOURCE_DTYPE))
    return cat


def apply_visit(cat: Catalogue, visit: int, matched: np.ndarray, new: np.ndarray) -> np.ndarray:
    with cat.begin(visit) as txn:
        txn.associate(matched)
        txn.create(new)
        return txn.changed()


def simulate_night(rng: np.random.Generator, n_visits: int = 6, n_new: int = 300, n_match=400):
    """Visit update lists: new DIASources and DIASources matched to earlier ones' Objects."""
    visits, ids, ras, decs = [], [], [], []
    next_id = 1_000
    for v in range(n_visits):
        ra = rng.uniform(0, 360, n_new)
        dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n_new)))
        ra[:10], dec[:10] = rng.uniform(-0.001, 0.001, 10) % 360, rng.uniform(-30, 30, 10)
        ra[10:15], dec[10:15] = rng.uniform(0, 360, 5), 89.9999
        new_ids = next_id + np.arange(n_new)
        next_id += n_new + 17
        mjd = 60000.0 + v * 0.05
        new = make_sources(new_ids, ra, dec, mjd + rng.uniform(0, 0.01, n_new), rng)
        matched = np.empty(0, DIASOURCE_DTYPE)
        if ids:
            known = np.concatenate(ids)
            pick = rng.integers(0, len(known), n_match)
            r, d = jitter(np.concatenate(ras)[pick], np.concatenate(decs)[pick], rng)
            m_ids = next_id + np.arange(n_match)
            next_id += n_match + 17
            matched = make_sources(
                m_ids, r, d, mjd + rng.uniform(0, 0.01, n_match), rng, known[pick]
            )
        visits.append((v, matched, new))
        ids.append(new_ids)
        ras.append(new["ra"])
        decs.append(new["dec"])
    return visits


def snapshot(cat: Catalogue) -> dict[int, tuple[bytes, bytes]]:
    return {
        int(c): (cat.chunk(c).objects.tobytes(), cat.chunk(c).recent.tobytes()) for c in cat.held()
    }


# --- statistics --------------------------------------------------------------------------------


def test_statistics_match_numpy_after_several_visits():
    rng = np.random.default_rng(7)
    cat = empty_catalogue()
    ra = np.array([359.99995, 0.00003, 120.0, 45.0, 200.0, 10.0])
    dec = np.array([0.0, -45.0, 89.99995, -89.9999, 30.0, 60.0])
    ids = np.arange(1, 7) * 10
    history = [make_sources(ids, ra, dec, 60000.0, rng)]
    apply_visit(cat, 0, np.empty(0, DIASOURCE_DTYPE), history[0])
    next_id = 1000
    for v in range(1, 8):
        obj = np.repeat(ids, 2)
        r, d = jitter(np.repeat(ra, 2), np.repeat(dec, 2), rng, sigma=2 * ARCSEC)
        src = make_sources(next_id + np.arange(len(obj)), r, d, 60000.0 + v, rng, obj)
        next_id += len(obj)
        history.append(src)
        apply_visit(cat, v, src, np.empty(0, DIASOURCE_DTYPE))

    allsrc = np.concatenate(history)
    allsrc["diaObjectId"][: len(ids)] = ids
    rows = cat.objects_by_id(ids)
    for row in rows:
        mine = allsrc[allsrc["diaObjectId"] == row["diaObjectId"]]
        assert row["nDiaSources"] == len(mine)
        assert row["firstMjd"] == mine["midpointMjdTai"].min()
        assert row["lastMjd"] == mine["midpointMjdTai"].max()
        assert row["isVariable"]  # 50 nJy of scatter about errors of 10: 15 sigma and more
        for axis in ("raErr", "decErr"):  # the error of the mean position
            want = np.sqrt(np.sum(mine[axis].astype("f8") ** 2)) / len(mine)
            np.testing.assert_allclose(row[axis], want, rtol=1e-5)
        for b in range(NBANDS):
            sel = mine["band"] == b
            flux = mine["psfFlux"][sel].astype("f8")
            assert row["psfFluxNdata"][b] == len(flux)
            if len(flux):
                np.testing.assert_allclose(row["psfFluxMean"][b], flux.mean(), rtol=1e-6)
                m2 = np.var(flux) * len(flux)
                np.testing.assert_allclose(row["psfFluxM2"][b], m2, rtol=1e-4, atol=1e-2)
                w = 1 / mine["psfFluxErr"][sel].astype("f8") ** 2
                wmean = np.sum(w * flux) / w.sum()
                np.testing.assert_allclose(row["psfFluxWMean"][b], wmean, rtol=1e-6)
                np.testing.assert_allclose(row["psfFluxMeanErr"][b], w.sum() ** -0.5, rtol=1e-6)
                chi2 = np.sum(w * (flux - wmean) ** 2)
                np.testing.assert_allclose(row["psfFluxChi2"][b], chi2, rtol=1e-4, atol=1e-4)
            else:
                assert np.isnan(row["psfFluxWMean"][b]) and np.isnan(row["psfFluxChi2"][b])
        vec = hp.ang2vec(mine["ra"], mine["dec"], lonlat=True).sum(axis=0)
        vec /= np.linalg.norm(vec)
        got = hp.ang2vec(row["ra"], row["dec"], lonlat=True)
        sep_arcsec = np.degrees(np.linalg.norm(got - vec)) * 3600
        assert sep_arcsec < 1e-6, (row["diaObjectId"], sep_arcsec)
        assert 0 <= row["ra"] < 360


def test_new_object_takes_its_source():
    rng = np.random.default_rng(1)
    cat = empty_catalogue()
    src = make_sources(np.array([5, 6]), np.array([10.0, 20.0]), np.array([5.0, -5.0]), 60001, rng)
    src["psfFlux"][1] = np.nan
    apply_visit(cat, 0, np.empty(0, DIASOURCE_DTYPE), src)
    rows = cat.objects_by_id([5, 6])
    assert list(rows["diaObjectId"]) == [5, 6]
    assert np.array_equal(rows["ra"], src["ra"]) and np.array_equal(rows["fine"], src["fine"])
    assert list(rows["nDiaSources"]) == [1, 1] and not rows["isVariable"].any()
    assert rows["psfFluxNdata"][0].sum() == 1 and rows["psfFluxNdata"][1].sum() == 0
    assert rows["psfFluxMean"][0, src["band"][0]] == src["psfFlux"][0]
    assert rows["psfFluxWMean"][0, src["band"][0]] == src["psfFlux"][0]
    assert rows["psfFluxMeanErr"][0, src["band"][0]] == src["psfFluxErr"][0]
    assert rows["psfFluxChi2"][0, src["band"][0]] == 0 and np.isnan(rows["psfFluxChi2"][1]).all()
    assert np.array_equal(rows["raErr"], src["raErr"])
    assert rows["firstMjd"][0] == rows["lastMjd"][0] == 60001
    assert list(cat.recent_for([5, 6])["diaObjectId"]) == [5, 6]


# --- recent DIASources -------------------------------------------------------------------------


def test_recent_keeps_the_latest_n_sorted():
    rng = np.random.default_rng(3)
    cat = empty_catalogue(recent_per_object=3)
    seed = make_sources(np.array([1]), np.array([50.0]), np.array([10.0]), 60000.0, rng)
    apply_visit(cat, 0, np.empty(0, DIASOURCE_DTYPE), seed)
    mjds = [60005.0, 60001.0, 60009.0, 60003.0, 60007.0, 60002.0]
    for v, mjd in enumerate(mjds, start=1):
        src = make_sources(np.array([100 + v]), np.array([50.0]), np.array([10.0]), mjd, rng, 1)
        apply_visit(cat, v, src, np.empty(0, DIASOURCE_DTYPE))
    recent = cat.recent_for([1, 999])
    assert list(recent["midpointMjdTai"]) == [60005.0, 60007.0, 60009.0]
    chunk = cat.chunk(seed["fine"][0] >> SHIFT)
    assert chunk.recent.tobytes() == recent.tobytes()
    assert cat.objects_by_id([1])["nDiaSources"][0] == 7
    # after the merge into the base, new rows are trimmed against the base ones
    for v, mjd in enumerate([60010.0, 60000.5], start=10):
        src = make_sources(np.array([100 + v]), np.array([50.0]), np.array([10.0]), mjd, rng, 1)
        apply_visit(cat, v, src, np.empty(0, DIASOURCE_DTYPE))
    assert list(cat.recent_for([1])["midpointMjdTai"]) == [60007.0, 60009.0, 60010.0]
    assert list(chunk.recent["diaSourceId"]) == [105, 103, 110]


def test_recent_trimmed_on_put_and_across_compaction():
    rng = np.random.default_rng(4)
    cat = Catalogue(CatalogueConfig(recent_per_object=2), SHIFT)
    ra, dec = np.full(3, 30.0), np.full(3, 20.0)
    objects = np.zeros(3, OBJECT_DTYPE)
    objects["diaObjectId"] = [3, 1, 2]
    objects["fine"] = fine_of(ra, dec)
    chunk = int(objects["fine"][0] >> SHIFT)
    recent = make_sources(np.arange(10, 19), np.full(9, 30.0), np.full(9, 20.0), 0.0, rng)
    recent["diaObjectId"] = [1, 1, 1, 2, 3, 3, 3, 3, 2]
    recent["midpointMjdTai"] = [5, 1, 3, 2, 9, 8, 7, 6, 1]
    cat.put(chunk, objects, recent)
    got = cat.chunk(chunk).recent
    assert list(got["diaObjectId"]) == [1, 1, 2, 2, 3, 3]
    assert list(got["midpointMjdTai"]) == [3, 5, 1, 2, 8, 9]
    assert list(cat.chunk(chunk).objects["diaObjectId"]) == [1, 2, 3]

    # enough rows in one chunk to force the pending part into the base mid-transaction
    many = np.repeat([1, 2, 3], 3000)
    n = len(many)
    src = make_sources(100 + np.arange(n), np.full(n, 30.0), np.full(n, 20.0), 0.0, rng, many)
    src["midpointMjdTai"] = rng.permutation(len(many)) + 100.0
    before = snapshot(cat)
    txn = cat.begin(1)
    txn.associate(src)
    txn.rollback()
    assert snapshot(cat) == before
    apply_visit(cat, 1, src, np.empty(0, DIASOURCE_DTYPE))
    got = cat.recent_for([1, 2, 3])
    for oid in (1, 2, 3):
        want = np.sort(src["midpointMjdTai"][src["diaObjectId"] == oid])[-2:]
        assert list(got["midpointMjdTai"][got["diaObjectId"] == oid]) == list(want)


def test_recent_history_is_a_time_window():
    """A visit sees the DIASources of its window; older ones leave memory, not before they must."""
    rng = np.random.default_rng(5)
    cat = empty_catalogue(recent_per_object=5, recent_days=10.0)
    seed = make_sources(np.array([1]), np.array([50.0]), np.array([10.0]), 60000.0, rng)
    apply_visit(cat, 0, np.empty(0, DIASOURCE_DTYPE), seed)
    for v, mjd in enumerate([60004.0, 60008.0, 60012.0], start=1):
        src = make_sources(np.array([100 + v]), np.array([50.0]), np.array([10.0]), mjd, rng, 1)
        apply_visit(cat, v, src, np.empty(0, DIASOURCE_DTYPE))
    chunk = cat.chunk(seed["fine"][0] >> SHIFT)
    assert cat.window_start("nobody") == -np.inf and cat.recent_floor() == -np.inf
    cat.pin("a", [], mjd=60015.0)  # window from 60005: the rows of 60000 and 60004 fall out
    assert cat.window_start("a") == 60005.0 and cat.recent_floor() == 60005.0
    got = cat.recent_for([1], cat.window_start("a"))
    assert list(got["midpointMjdTai"]) == [60008.0, 60012.0]
    assert list(chunk.recent["midpointMjdTai"]) == [60008.0, 60012.0]  # gone from memory
    assert cat.stats()["n_recent"] == 2
    # a visit in flight with an earlier time holds the floor back: memory keeps its window
    cat.unpin("a")
    cat.pin("b", [], mjd=60016.0)
    cat.pin("c", [], mjd=60019.0)
    assert cat.recent_floor() == 60006.0
    assert list(cat.recent_for([1], cat.window_start("c"))["midpointMjdTai"]) == [60012.0]
    assert list(chunk.recent["midpointMjdTai"]) == [60008.0, 60012.0]
    cat.unpin("b")
    cat.unpin("c")
    cat.pin("d", [], mjd=60030.0)  # nothing left in the window: the chunk keeps no row
    assert cat.recent_for([1], cat.window_start("d")).size == 0
    assert chunk.recent.size == 0 and cat.objects_by_id([1])["nDiaSources"][0] == 4
    with pytest.raises(ValueError, match="recent_days must be positive"):
        CatalogueConfig(recent_days=0.0)


# --- determinism -------------------------------------------------------------------------------


def test_two_slices_with_margins_equal_one_slice():
    rng = np.random.default_rng(11)
    visits = simulate_night(rng)
    owned_a = ALL_CHUNKS[ALL_CHUNKS % 2 == 0]
    owned_b = ALL_CHUNKS[ALL_CHUNKS % 2 == 1]
    margin_a = rng.choice(owned_b, 40, replace=False)
    margin_b = rng.choice(owned_a, 40, replace=False)
    a = empty_catalogue(np.sort(np.r_[owned_a, margin_a]))
    b = empty_catalogue(np.sort(np.r_[margin_b, owned_b]))
    one = empty_catalogue()
    for v, matched, new in visits:
        changed = []
        for cat, owned in ((a, owned_a), (b, owned_b)):
            with cat.begin(v) as txn:
                txn.associate(matched)
                txn.create(new)
                changed.append(txn.changed(owned))
        want = apply_visit(one, v, matched, new)
        got = np.concatenate(changed)
        got = got[np.argsort(got["diaObjectId"])]
        assert got.tobytes() == want.tobytes()
    full = snapshot(one)
    for cat in (a, b):
        for c, data in snapshot(cat).items():
            assert data == full[c], c
    assert one.stats()["n_objects"] == sum(len(new) for _, _, new in visits)


def test_shuffled_sources_give_identical_catalogue():
    rng = np.random.default_rng(5)
    visits = simulate_night(rng, n_visits=4)
    plain, shuffled = empty_catalogue(), empty_catalogue()
    for v, matched, new in visits:
        apply_visit(plain, v, matched, new)
        apply_visit(shuffled, v, rng.permutation(matched), rng.permutation(new))
    assert snapshot(plain) == snapshot(shuffled)


# --- transactions ------------------------------------------------------------------------------


def test_rollback_restores_and_commit_keeps_and_changed_is_exact():
    rng = np.random.default_rng(9)
    visits = simulate_night(rng, n_visits=4)
    cat = empty_catalogue()
    for v, matched, new in visits[:3]:
        apply_visit(cat, v, matched, new)
    before = snapshot(cat)
    stats_before = cat.stats()
    v, matched, new = visits[3]
    # ids below every existing one take the insert path rather than the append path
    low = make_sources(
        np.arange(1, 40), rng.uniform(0, 360, 39), rng.uniform(-60, 60, 39), 6e4, rng
    )

    txn = cat.begin(v)
    txn.associate(matched)
    txn.create(new)
    txn.create(low)
    txn.associate(matched[:50])
    changed = txn.changed()
    want = np.unique(np.r_[matched["diaObjectId"], new["diaSourceId"], low["diaSourceId"]])
    assert np.array_equal(changed["diaObjectId"], want)
    assert changed.tobytes() == cat.objects_by_id(want).tobytes()
    some = ALL_CHUNKS[:50]
    assert set(txn.changed(some)["diaObjectId"]) == {
        i for i, c in zip(want, cat.locate(want), strict=True) if c in some
    }
    txn.rollback()
    assert snapshot(cat) == before
    assert cat.stats() == stats_before
    assert np.all(cat.locate(np.r_[new["diaSourceId"], low["diaSourceId"]]) == -1)
    with pytest.raises(RuntimeError):
        txn.commit()

    txn = cat.begin(v)
    txn.associate(matched)
    txn.create(new)
    txn.commit()
    assert np.all(cat.locate(new["diaSourceId"]) >= 0)
    fresh = empty_catalogue()
    for vv, mm, nn in visits:
        apply_visit(fresh, vv, mm, nn)
    assert snapshot(cat) == snapshot(fresh)


def test_context_manager_rolls_back_on_error():
    rng = np.random.default_rng(2)
    cat = empty_catalogue()
    v, _, new = simulate_night(rng, n_visits=1)[0]
    before = snapshot(cat)
    with pytest.raises(ZeroDivisionError), cat.begin(v) as txn:
        txn.create(new)
        _ = 1 / 0
    assert snapshot(cat) == before


def test_open_transactions_must_touch_disjoint_chunks():
    rng = np.random.default_rng(6)
    cat = empty_catalogue()
    src = make_sources(np.array([1, 2]), np.array([10.0, 190.0]), np.array([40.0, -40.0]), 6e4, rng)
    c1, c2 = (src["fine"] >> SHIFT).tolist()
    assert c1 != c2
    t1 = cat.begin(1)
    t1.create(src[:1])
    t2 = cat.begin(2)
    t2.create(src[1:])
    before = snapshot(cat)
    again = make_sources(np.array([3]), np.array([10.0]), np.array([40.0]), 6e4, rng)
    with pytest.raises(ChunkConflict):
        t2.create(again)
    assert snapshot(cat) == before
    with pytest.raises(RuntimeError):
        cat.begin(1)
    with pytest.raises(ChunkConflict):
        cat.put(c1, np.empty(0, OBJECT_DTYPE), np.empty(0, DIASOURCE_DTYPE))
    t1.rollback()
    t2.create(again)
    t2.commit()
    assert np.array_equal(cat.locate([1, 2, 3]), [-1, c2, c1])


def test_unheld_objects_and_chunks_are_ignored():
    rng = np.random.default_rng(8)
    src = make_sources(np.array([1, 2]), np.array([10.0, 190.0]), np.array([40.0, -40.0]), 6e4, rng)
    held = int(src["fine"][0] >> SHIFT)
    cat = empty_catalogue([held])
    with cat.begin(0) as txn:
        assert txn.create(src) == 1
    upd = make_sources(
        np.array([10, 11, 12]), np.array([10.0, 190.0, 5.0]), np.zeros(3), 6e4 + 1, rng
    )
    upd["diaObjectId"] = [1, 2, 0]
    with cat.begin(1) as txn:
        assert txn.associate(upd) == 1
    assert cat.objects_by_id([1])["nDiaSources"][0] == 2
    assert np.array_equal(cat.locate([1, 2]), [held, -1])
    with pytest.raises(KeyError):
        cat.objects_by_id([2])
    with pytest.raises(ValueError), cat.begin(2) as txn:
        txn.create(src[:1])


# --- holding chunks ----------------------------------------------------------------------------


def chunk_rows(chunk: int, n: int, first_id: int) -> np.ndarray:
    rows = np.zeros(n, OBJECT_DTYPE)
    rows["diaObjectId"] = first_id + np.arange(n)
    rows["fine"] = (chunk << SHIFT) + np.arange(n) % (1 << SHIFT)
    rows["nDiaSources"] = 1
    return rows


def test_put_gather_lookup():
    cat = Catalogue(CatalogueConfig(), SHIFT)
    cat.put(7, chunk_rows(7, 5, 100)[::-1], np.empty(0, DIASOURCE_DTYPE))
    cat.put(3, chunk_rows(3, 4, 10), np.empty(0, DIASOURCE_DTYPE))
    assert cat.has(7) and not cat.has(8)
    assert list(cat.missing([3, 8, 7, 9])) == [8, 9]
    objects, chunk_of_row = cat.gather([7, 3])
    assert list(objects["diaObjectId"]) == [100, 101, 102, 103, 104, 10, 11, 12, 13]
    assert list(chunk_of_row) == [7] * 5 + [3] * 4
    assert list(cat.objects_by_id([12, 101, 12])["diaObjectId"]) == [12, 101, 12]
    assert list(cat.locate([13, 104, 5])) == [3, 7, -1]
    with pytest.raises(ValueError, match="outside"):
        cat.put(4, chunk_rows(3, 2, 500), np.empty(0, DIASOURCE_DTYPE))
    with pytest.raises(ValueError, match="another chunk"):
        cat.put(4, chunk_rows(4, 2, 100), np.empty(0, DIASOURCE_DTYPE))
    orphan = np.zeros(1, DIASOURCE_DTYPE)
    orphan["diaObjectId"] = 999
    with pytest.raises(ValueError, match="no Object"):
        cat.put(4, chunk_rows(4, 2, 500), orphan)
    cat.put(7, chunk_rows(7, 2, 200), np.empty(0, DIASOURCE_DTYPE))
    assert list(cat.locate([100, 200])) == [-1, 7]


def test_put_keeps_its_own_copy_of_rows_already_in_order():
    cat = Catalogue(CatalogueConfig(), SHIFT)
    objects = chunk_rows(5, 3, 50)
    recent = np.zeros(3, DIASOURCE_DTYPE)
    recent["diaObjectId"], recent["diaSourceId"] = [50, 51, 52], [50, 51, 52]
    recent["midpointMjdTai"] = 60000.0
    cat.put(5, objects, recent)  # both already sorted: nothing to sort, still copied
    objects["ra"], recent["psfFlux"] = -1.0, -1.0
    assert recent.flags.writeable
    ch = cat.chunk(5)
    assert not np.any(ch.objects["ra"] == -1.0) and not np.any(ch.recent["psfFlux"] == -1.0)


def test_lru_eviction_spares_pinned_chunks():
    per_chunk = len(chunk_rows(0, 1000, 0).tobytes()) * 1.2
    cat = Catalogue(CatalogueConfig(max_megabytes=3.5 * per_chunk / 1e6), SHIFT)
    none = np.empty(0, DIASOURCE_DTYPE)
    cat.pin("visit-1", [0])
    for c in range(3):
        cat.put(c, chunk_rows(c, 1000, c * 10_000), none)
    assert cat.stats()["evictions"] == 0
    cat.gather([1])  # 2 is now the least recently used unpinned chunk
    cat.put(3, chunk_rows(3, 1000, 30_000), none)
    assert list(cat.held()) == [0, 1, 3]
    assert cat.locate([20_000])[0] == -1
    cat.put(4, chunk_rows(4, 1000, 40_000), none)
    assert list(cat.held()) == [0, 3, 4]
    stats = cat.stats()
    assert stats["evictions"] == 2 and stats["n_chunks"] == 3 and stats["n_objects"] == 3000
    assert stats["bytes"] == cat.nbytes <= cat.config.max_megabytes * 1e6
    cat.pin("visit-2", [3, 4])
    cat.put(5, chunk_rows(5, 1000, 50_000), none)
    assert list(cat.held()) == [0, 3, 4, 5]  # everything else pinned: over budget, nothing lost
    cat.unpin("visit-1")
    assert list(cat.held()) == [3, 4, 5]
    assert cat.stats()["evictions"] == 3
    # row 193 + id key 8 + lookup 12, plus at most ~8 % spare capacity
    assert 213 <= cat.bytes_per_object() < 231


def test_variability_comes_from_the_flux_history_and_stays():
    rng = np.random.default_rng(3)
    cat = empty_catalogue()
    ra, dec = np.array([10.0, 50.0]), np.array([5.0, -5.0])
    first = make_sources(np.array([1, 2]), ra, dec, 60000.0, rng)
    first["band"], first["psfFlux"], first["psfFluxErr"] = 2, 1000.0, 10.0
    apply_visit(cat, 0, np.empty(0, DIASOURCE_DTYPE), first)

    def detect(visit, mjd, flux):
        src = make_sources(np.array([10, 11]) + 10 * visit, ra, dec, mjd, rng, np.array([1, 2]))
        src["band"], src["psfFluxErr"] = 2, 10.0
        src["psfFlux"] = flux
        apply_visit(cat, visit, src, np.empty(0, DIASOURCE_DTYPE))
        return cat.objects_by_id([1, 2])["isVariable"].tolist()

    # an 80 s pair: two detections, no span: neither, whatever the fluxes
    assert detect(1, 60000.0 + 80 / 86400, [1000.0, 5000.0]) == [False, False]
    # a third detection an hour on: the steady one stays steady, the other varies
    assert detect(2, 60000.05, [1002.0, 1000.0]) == [False, True]
    # once shown, it stays variable, however steady the next fluxes
    assert detect(3, 60000.1, [1001.0, 1000.0]) == [False, True]
    rows = cat.objects_by_id([2])
    assert rows["psfFluxNdata"][0, 2] == 4 and rows["psfFluxChi2"][0, 2] > 1e4
