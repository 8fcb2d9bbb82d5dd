from __future__ import annotations

import astropy.units as u
import numba
import numpy as np
import pytest
from astropy.coordinates import SkyCoord, search_around_sky
from hypothesis import given, settings
from hypothesis import strategies as st

from association.matching.zoneindex import ZoneIndex
from tests.oracles.reference import brute_force_nearest, brute_force_pairs, separation_matrix

# cluster centres: RA wrap, both poles (and right at them), generic sky
CENTRES = {
    "wrap": [(0.0, 0.0), (359.9999, 40.0), (0.0001, -60.0)],
    "poles": [(10.0, 89.9995), (250.0, -89.9995), (0.0, 90.0), (123.0, -90.0)],
    "generic": [(150.0, 2.0), (300.0, -35.0), (75.0, 70.0)],
}
CENTRES["mixed"] = [c for cs in CENTRES.values() for c in cs]


def scatter(rng, centres, n, spread_deg):
    """n points scattered about randomly chosen centres (clipped at the poles)."""
    c = np.array(centres)[rng.integers(0, len(centres), n)]
    dec = np.clip(c[:, 1] + rng.normal(0, spread_deg, n), -90, 90)
    cosd = np.maximum(np.cos(np.radians(dec)), 1e-4)
    ra = (c[:, 0] + rng.normal(0, spread_deg, n) / cosd) % 360.0
    return ra, dec


@st.composite
def catalogues(draw):
    region = draw(st.sampled_from(sorted(CENTRES)))
    radius = draw(st.floats(0.1, 5.0))
    n = draw(st.integers(1, 400))
    m = draw(st.integers(1, 150))
    spread = radius / 3600 * draw(st.sampled_from([0.5, 3.0, 30.0]))
    zone_height = draw(st.sampled_from([None, radius / 3600, 7 * radius / 3600]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ra, dec = scatter(rng, CENTRES[region], n, spread)
    dup = rng.random(n) < 0.2  # exact duplicates of earlier positions: distance ties
    src = rng.integers(0, np.arange(n) + 1)
    ra, dec = np.where(dup, ra[src], ra), np.where(dup, dec[src], dec)
    ids = rng.permutation(n).astype(np.int64) * 7 + 3
    qra, qdec = scatter(rng, CENTRES[region], m, spread)
    hit = rng.random(m) < 0.3  # queries right on an object
    obj = rng.integers(0, n, m)
    qra, qdec = np.where(hit, ra[obj], qra), np.where(hit, dec[obj], qdec)
    return ra, dec, ids, qra, qdec, radius, zone_height


def pair_set(q, o, sep, radius):
    """Pairs, minus those within 1e-6 (relative) of the radius: float ties."""
    keep = np.abs(sep[q, o] - radius) > 1e-6 * radius
    return set(zip(q[keep].tolist(), o[keep].tolist(), strict=True))


@settings(max_examples=40, deadline=None)
@given(catalogues())
def test_pairs_equal_brute_force_and_astropy(cat):
    ra, dec, ids, qra, qdec, radius, zone_height = cat
    index = ZoneIndex.build(ra, dec, ids, zone_height)
    q, o, d = index.pairs(qra, qdec, radius)
    assert np.all(np.diff(q * (len(ra) + 1) + o) > 0)  # sorted by (query, row), no repeats
    bq, bo, _ = brute_force_pairs(ra, dec, qra, qdec, radius)
    sep = separation_matrix(qra, qdec, ra, dec)
    np.testing.assert_allclose(d, sep[q, o], rtol=0, atol=1e-8)
    ours = pair_set(q, o, sep, radius)
    assert ours == pair_set(bq, bo, sep, radius)
    aq, ao, _, _ = search_around_sky(
        SkyCoord(qra * u.deg, qdec * u.deg), SkyCoord(ra * u.deg, dec * u.deg), radius * u.arcsec
    )
    assert ours == pair_set(aq, ao, sep, radius)


@settings(max_examples=40, deadline=None)
@given(catalogues())
def test_nearest_equals_brute_force(cat):
    ra, dec, ids, qra, qdec, radius, zone_height = cat
    index = ZoneIndex.build(ra, dec, ids, zone_height)
    rows, dist = index.nearest(qra, qdec, radius)
    b_rows, b_dist = brute_force_nearest(ra, dec, ids, qra, qdec, radius)
    sep = separation_matrix(qra, qdec, ra, dec)
    for k in np.flatnonzero(rows != b_rows):
        r, b = rows[k], b_rows[k]
        # a float tie at the radius, or two objects equally far but for rounding
        # (around a pole); exact duplicates must go to the smaller id
        at_radius = any(x >= 0 and abs(sep[k, x] - radius) <= 1e-6 * radius for x in (r, b))
        tied = min(r, b) >= 0 and abs(sep[k, r] - sep[k, b]) < 1e-9
        assert at_radius or (tied and (ra[r], dec[r]) != (ra[b], dec[b]))
    same = (rows == b_rows) & (rows >= 0)
    np.testing.assert_allclose(dist[same], b_dist[same], rtol=0, atol=1e-8)
    assert np.isnan(dist[rows < 0]).all()


def test_exact_ties_go_to_the_smaller_id():
    ra = np.array([10.0, 10.0, 10.0, 10.0 + 1e-4])
    dec = np.array([-5.0, -5.0, -5.0, -5.0])
    ids = np.array([30, 10, 20, 1])
    index = ZoneIndex.build(ra, dec, ids)
    rows, dist = index.nearest(np.array([10.0, 10.0 + 1e-4]), np.array([-5.0, -5.0]), 1.0)
    assert rows.tolist() == [1, 3]
    assert dist.tolist() == [0.0, 0.0]


def test_ra_wrap_and_pole():
    ra = np.array([359.99999, 0.00001, 180.0, 0.0, 90.0])
    dec = np.array([0.0, 0.0, 89.99995, 90.0, -90.0])
    index = ZoneIndex.build(ra, dec, np.arange(5))
    q, o, d = index.pairs(np.array([0.0, 0.0, 270.0]), np.array([0.0, 89.99999, -89.9999]), 0.5)
    assert list(zip(q.tolist(), o.tolist(), strict=True)) == [
        (0, 0),
        (0, 1),
        (1, 2),
        (1, 3),
        (2, 4),
    ]
    np.testing.assert_allclose(d, [0.036, 0.036, 0.216, 0.036, 0.36], rtol=1e-6)


def test_empty_inputs_and_bad_values():
    empty = np.empty(0)
    index = ZoneIndex.build(empty, empty, np.empty(0, np.int64))
    rows, dist = index.nearest(np.array([1.0]), np.array([2.0]), 1.0)
    assert rows.tolist() == [-1] and np.isnan(dist).all()
    assert all(a.size == 0 for a in index.pairs(np.array([1.0]), np.array([2.0]), 1.0))
    index = ZoneIndex.build(np.array([1.0]), np.array([2.0]), np.array([5]))
    assert all(a.size == 0 for a in index.pairs(empty, empty, 1.0))
    with pytest.raises(ValueError, match="not finite"):
        ZoneIndex.build(np.array([1.0, np.nan]), np.array([2.0, 3.0]), np.array([1, 2]))
    with pytest.raises(ValueError, match="not finite"):
        ZoneIndex.build(np.array([1.0]), np.array([91.0]), np.array([1]))
    with pytest.raises(ValueError, match="radius"):
        index.pairs(np.array([1.0]), np.array([2.0]), -1.0)
    with pytest.raises(ValueError, match="one length"):
        ZoneIndex.build(np.array([1.0]), np.array([2.0, 3.0]), np.array([1]))


def test_larger_field_and_thread_count_independence():
    rng = np.random.default_rng(7)
    ra, dec = scatter(rng, [(0.05, -30.0)], 10000, 0.02)
    qra, qdec = scatter(rng, [(0.05, -30.0)], 300, 0.02)
    ids = np.arange(ra.size) + 100
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = ZoneIndex.build(ra, dec, ids)
        one_pairs = one.pairs(qra, qdec, 3.0)
    finally:
        numba.set_num_threads(threads)
    index = ZoneIndex.build(ra, dec, ids)
    assert np.array_equal(index.rows, one.rows) and np.array_equal(index.offsets, one.offsets)
    pairs = index.pairs(qra, qdec, 3.0)
    assert all(np.array_equal(a, b) for a, b in zip(pairs, one_pairs, strict=True))
    bq, bo, _ = brute_force_pairs(ra, dec, qra, qdec, 3.0)
    sep = separation_matrix(qra, qdec, ra, dec)
    assert pair_set(*pairs[:2], sep, 3.0) == pair_set(bq, bo, sep, 3.0)
    assert len(pairs[0]) > 50


def test_objects_outside_the_sampled_layout_are_found():
    # the layout is shaped from every 2nd row here; the odd-row outliers lie
    # far outside it and must still be found (they sit in the edge cells)
    rng = np.random.default_rng(8)
    n = 132_000
    ra, dec = scatter(rng, [(10.0, 10.0)], n, 0.01)
    outliers = np.arange(1, 81, 2)
    ra[outliers], dec[outliers] = scatter(rng, CENTRES["mixed"], outliers.size, 0.001)
    index = ZoneIndex.build(ra, dec, np.arange(n))
    qra = np.concatenate([ra[outliers] + 1e-5, ra[:10]]) % 360.0
    qdec = np.concatenate([dec[outliers], dec[:10]])
    q, o, _ = index.pairs(qra, qdec, 2.0)
    bq, bo, _ = brute_force_pairs(ra, dec, qra, qdec, 2.0)
    sep = separation_matrix(qra, qdec, ra, dec)
    assert pair_set(q, o, sep, 2.0) == pair_set(bq, bo, sep, 2.0)
    assert set(outliers.tolist()) <= set(o.tolist())


def test_unnormalised_ra_is_read_modulo_360():
    ra = np.array([-0.00001, 360.00002, 720.5, -359.5])
    dec = np.zeros(4)
    index = ZoneIndex.build(ra, dec, np.arange(4))
    q, o, d = index.pairs(np.array([0.0, 0.5]), np.array([0.0, 0.0]), 0.1)
    assert list(zip(q.tolist(), o.tolist(), strict=True)) == [(0, 0), (0, 1), (1, 2), (1, 3)]
    np.testing.assert_allclose(d, [0.036, 0.072, 0.0, 0.0], atol=1e-6)
