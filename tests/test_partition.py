from __future__ import annotations

import healpy as hp
import numpy as np
import pytest

from association.sky.partition import MARGIN_LIMIT, Partition

PART = Partition()
# field centres: generic sky, RA wrap, both poles, the equator at a face corner
CENTRES = [(150.0, 2.0), (0.3, -20.0), (359.8, 45.0), (10.0, 89.5), (200.0, -89.9), (45.0, 0.0)]


def offset(ra, dec, dist_deg, bearing_deg):
    """Points ``dist_deg`` from (ra, dec) towards ``bearing_deg`` (east of north)."""
    d, a = np.radians(dec), np.radians(ra)
    r, t = np.radians(dist_deg), np.radians(bearing_deg)
    dec2 = np.arcsin(np.clip(np.sin(d) * np.cos(r) + np.cos(d) * np.sin(r) * np.cos(t), -1, 1))
    ra2 = a + np.arctan2(np.sin(t) * np.sin(r) * np.cos(d), np.cos(r) - np.sin(d) * np.sin(dec2))
    return np.degrees(ra2) % 360.0, np.degrees(dec2)


def disc_points(ra, dec, radius_deg, n, rng):
    """Points spread over a disc, edge included."""
    dist = radius_deg * np.sqrt(rng.random(n))
    dist[: n // 10] = radius_deg * (1 - 1e-9)
    return offset(ra, dec, dist, rng.uniform(0, 360, n))


def test_chunk_ranges_are_contiguous_and_match_fine_index():
    rng = np.random.default_rng(1)
    chunks = np.arange(PART.n_chunks)
    lo, hi = PART.chunk_range(chunks)
    assert lo[0] == 0 and hi[-1] == 12 << (2 * PART.fine_order)
    assert np.array_equal(hi[:-1], lo[1:])
    ra = rng.uniform(0, 360, 20000)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 20000)))
    fine = PART.fine_index(ra, dec)
    chunk = PART.chunk_of(ra, dec)
    assert np.array_equal(chunk, PART.chunk_of_fine(fine))
    assert np.array_equal(chunk, hp.ang2pix(64, ra, dec, nest=True, lonlat=True))
    c_lo, c_hi = PART.chunk_range(chunk)
    assert np.all((c_lo <= fine) & (fine < c_hi))


def test_fine_range_query_selects_exactly_a_chunk():
    rng = np.random.default_rng(2)
    ra, dec = disc_points(0.2, 30.0, 2.0, 50000, rng)
    fine = np.sort(PART.fine_index(ra, dec))
    chunk = PART.chunk_of_fine(fine)
    for c in PART.fov_chunks(0.2, 30.0, 2.0):
        lo, hi = PART.chunk_range(c)
        i, j = np.searchsorted(fine, [lo, hi])
        assert np.array_equal(np.flatnonzero(chunk == c), np.arange(i, j))


@pytest.mark.parametrize("centre", CENTRES)
def test_fov_chunks_cover_the_disc(centre):
    rng = np.random.default_rng(3)
    chunks = PART.fov_chunks(*centre, 1.75)
    assert np.array_equal(chunks, np.unique(chunks))
    ra, dec = disc_points(*centre, 1.75, 20000, rng)
    assert np.isin(PART.chunk_of(ra, dec), chunks).all()


@pytest.mark.parametrize("n_slices", [1, 2, 3, 4, 7])
def test_owner_covers_every_chunk_and_balances(n_slices):
    rng = np.random.default_rng(4)
    whole = np.bincount(PART.owner(np.arange(PART.n_chunks), n_slices), minlength=n_slices)
    assert whole.sum() == PART.n_chunks
    assert whole.max() - whole.min() <= 0.02 * PART.n_chunks / n_slices + 1
    for _ in range(100):
        ra, dec = rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1)))
        chunks = PART.fov_chunks(ra, dec, 1.75)
        owners = PART.owner(chunks, n_slices)
        assert ((owners >= 0) & (owners < n_slices)).all()
        per_slice = np.bincount(owners, minlength=n_slices)
        assert per_slice.max() - per_slice.min() <= 4
        owned = [PART.slice_chunks(ra, dec, 1.75, s, n_slices, 0.01)[0] for s in range(n_slices)]
        assert np.array_equal(np.sort(np.concatenate(owned)), chunks)


@pytest.mark.parametrize("centre", CENTRES)
@pytest.mark.parametrize("margin_deg", [2.0 / 3600, 0.05, 0.2])
def test_margin_holds_every_point_near_an_owned_chunk(centre, margin_deg):
    rng = np.random.default_rng(5)
    owned = PART.fov_chunks(*centre, 1.75)[::2]
    margin = PART.margin_chunks(owned, margin_deg)
    assert not np.isin(margin, owned).any()
    # points on the owned chunks' edges, moved up to the margin in any direction
    edge = np.concatenate(
        [hp.boundaries(64, c, step=32, nest=True).T for c in owned]
    )  # (k, 3) unit vectors
    ra, dec = hp.vec2ang(edge, lonlat=True)
    k = np.repeat(np.arange(ra.size), 20)
    dist = margin_deg * rng.random(k.size) * (1 - 1e-9)
    pra, pdec = offset(ra[k], dec[k], dist, rng.uniform(0, 360, k.size))
    assert np.isin(PART.chunk_of(pra, pdec), np.concatenate([owned, margin])).all()
    # and every margin chunk touches an owned one
    neighbours = hp.get_all_neighbours(64, owned, nest=True).ravel()
    assert np.isin(margin, neighbours).all()


def test_margin_beyond_the_supported_width_raises():
    limit = MARGIN_LIMIT * PART.chunk_resolution_deg
    PART.margin_chunks(np.array([5]), limit)
    with pytest.raises(ValueError, match="margin_deg"):
        PART.margin_chunks(np.array([5]), 1.01 * limit)


@pytest.mark.parametrize("centre", CENTRES)
def test_slice_margin_holds_every_match_of_its_sources(centre):
    rng = np.random.default_rng(6)
    margin_deg = 5.0 / 3600
    src_ra, src_dec = disc_points(*centre, 1.75, 200000, rng)
    src_chunk = PART.chunk_of(src_ra, src_dec)
    obj_ra, obj_dec = offset(
        src_ra, src_dec, margin_deg * rng.random(src_ra.size), 360 * rng.random(src_ra.size)
    )
    obj_chunk = PART.chunk_of(obj_ra, obj_dec)
    for s in range(3):
        owned, margin = PART.slice_chunks(*centre, 1.75, s, 3, margin_deg)
        mine = np.isin(src_chunk, owned)
        assert mine.any()
        assert np.isin(obj_chunk[mine], np.concatenate([owned, margin])).all()


def test_partition_is_deterministic_and_validates():
    assert np.array_equal(PART.fov_chunks(10, 10, 1.0), Partition().fov_chunks(10, 10, 1.0))
    with pytest.raises(ValueError):
        Partition(chunk_order=8, fine_order=6)
    with pytest.raises(ValueError):
        PART.owner(np.arange(3), 0)
    with pytest.raises(ValueError):
        PART.slice_chunks(0, 0, 1, 3, 3, 0.0)
