from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from association.matching.ellipse import EllipseConfig, conclusive_matches, ellipse_pairs
from association.matching.zoneindex import ZoneIndex
from tests.oracles.reference import brute_force_ellipse_pairs, ellipse_q

# field centres: generic sky, RA wrap, near both poles and at one
CENTRES = [(150.0, 2.0), (359.9995, 20.0), (0.0002, -45.0), (45.0, 89.995), (300.0, -89.99)]
CENTRES.append((0.0, 90.0))


def offset(ra, dec, xi, eta):
    """Positions at tangent-plane offsets (xi east, eta north; radians) from (ra, dec)."""
    a0, d0 = np.radians(ra), np.radians(dec)
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(rho > 0, np.sin(c) / rho, 1.0)
    d = np.arcsin(np.cos(c) * np.sin(d0) + eta * s * np.cos(d0))
    a = a0 + np.arctan2(xi * s, np.cos(d0) * np.cos(c) - eta * s * np.sin(d0))
    return np.degrees(a) % 360.0, np.degrees(d)


@st.composite
def fields(draw):
    centre = draw(st.sampled_from(CENTRES))
    n_pred = draw(st.integers(1, 40))
    n_src = draw(st.integers(1, 300))
    ratio = draw(st.sampled_from([1.0, 3.0, 50.0]))
    config = draw(
        st.sampled_from([EllipseConfig(), EllipseConfig(1.0, 0.1, 200.0), EllipseConfig(5.0)])
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = np.radians(60 / 3600)
    pra, pdec = offset(*centre, *rng.normal(0, spread, (2, n_pred)))
    sra, sdec = offset(*centre, *rng.normal(0, spread, (2, n_src)))
    a = rng.uniform(0.05, 25.0, n_pred)
    b = a / ratio
    pa = rng.uniform(-360, 360, n_pred)
    return pra, pdec, a, b, pa, sra, sdec, config


@settings(max_examples=40, deadline=None)
@given(fields())
def test_ellipse_pairs_equal_brute_force(field):
    pra, pdec, a, b, pa, sra, sdec, config = field
    p, s = ellipse_pairs(pra, pdec, a, b, pa, sra, sdec, config)
    assert np.all(np.diff(p * len(sra) + s) > 0)  # sorted, no repeats
    bp, bs = brute_force_ellipse_pairs(pra, pdec, a, b, pa, sra, sdec, config)
    q = ellipse_q(pra, pdec, a, b, pa, sra, sdec, config)
    ours = set(zip(p.tolist(), s.tolist(), strict=True))
    differ = ours ^ set(zip(bp.tolist(), bs.tolist(), strict=True))
    assert all(abs(q[k] - 1.0) < 1e-9 for k in differ)


@pytest.mark.parametrize("centre", CENTRES)
@pytest.mark.parametrize("ratio", [1.0, 50.0])
def test_rotated_elongated_ellipse_boundaries(centre, ratio):
    # sources just inside and just outside both ends of both axes, every PA
    config = EllipseConfig(scale=1.0, min_axis_arcsec=0.01, max_axis_arcsec=100.0)
    major, minor = 20.0, 20.0 / ratio
    pas = np.arange(0.0, 360.0, 7.5)
    for pa in pas:
        t = np.radians(pa)
        along = np.array([np.sin(t), np.cos(t)])  # (east, north) of the major axis
        across = np.array([np.cos(t), -np.sin(t)])
        offsets = []
        for axis, length in ((along, major), (across, minor)):
            for f in (0.99, -0.99, 1.01, -1.01):
                offsets.append(axis * f * np.radians(length / 3600))
        xi, eta = np.array(offsets).T
        sra, sdec = offset(*centre, xi, eta)
        _, s = ellipse_pairs(
            np.array([centre[0]]), np.array([centre[1]]), np.array([major]),
            np.array([minor]), np.array([pa]), sra, sdec, config,
        )  # fmt: skip
        assert s.tolist() == [0, 1, 4, 5], pa


def test_axes_are_scaled_then_clamped():
    a, b = EllipseConfig(scale=3.0, min_axis_arcsec=0.5, max_axis_arcsec=60.0).axes(
        np.array([0.1, 10.0, 30.0]), np.array([0.1, 1.0, 0.01])
    )
    assert a.tolist() == [0.5, 30.0, 60.0]
    assert b.tolist() == [0.5, 3.0, 0.5]
    # a source 1.4" east of a tiny prediction is inside the 0.5" floor only if scaled
    ra, dec = offset(10.0, 10.0, np.radians(np.array([0.4, 0.6]) / 3600), np.zeros(2))
    one = np.array([1.0])
    _, s = ellipse_pairs(one * 10, one * 10, one * 0.01, one * 0.01, one * 0, ra, dec)
    assert s.tolist() == [0]


def test_prebuilt_index_and_empty_inputs():
    rng = np.random.default_rng(3)
    sra, sdec = offset(20.0, -10.0, *rng.normal(0, 1e-4, (2, 500)))
    pra, pdec = offset(20.0, -10.0, *rng.normal(0, 1e-4, (2, 30)))
    a, b, pa = np.full(30, 4.0), np.full(30, 1.0), rng.uniform(0, 180, 30)
    index = ZoneIndex.build(sra, sdec, np.arange(500))
    got = ellipse_pairs(pra, pdec, a, b, pa, sra, sdec, index=index)
    want = ellipse_pairs(pra, pdec, a, b, pa, sra, sdec)
    assert all(np.array_equal(x, y) for x, y in zip(got, want, strict=True))
    assert len(got[0]) > 0
    empty = np.empty(0)
    for p, s in (
        ellipse_pairs(empty, empty, empty, empty, empty, sra, sdec),
        ellipse_pairs(pra, pdec, a, b, pa, empty, empty),
    ):
        assert p.size == 0 and s.size == 0
    with pytest.raises(ValueError, match="finite"):
        ellipse_pairs(pra, pdec, a * np.nan, b, pa, sra, sdec)


def test_conclusive_rule():
    # pred 0 holds only src 0                    -> conclusive
    # pred 1 holds src 1 and src 2                -> not (two candidates)
    # pred 2 and pred 3 both hold only src 3      -> not (src in two ellipses)
    # pred 4 holds only src 2, which pred 1 holds -> not
    # pred 5 holds only src 4                     -> conclusive
    pred = np.array([0, 1, 1, 2, 3, 4, 5])
    src = np.array([0, 1, 2, 3, 3, 2, 4])
    p, s = conclusive_matches(pred, src, n_pred=7, n_src=6)
    assert p.tolist() == [0, 5] and s.tolist() == [0, 4]
    p, s = conclusive_matches(np.empty(0, np.int64), np.empty(0, np.int64), 3, 3)
    assert p.size == 0 and s.size == 0
