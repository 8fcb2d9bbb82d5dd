"""Moving objects first: one-to-one by cost, no cap on the ellipse, known variables kept."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from association.matching.assign import position_cost
from association.matching.movers import MoverConfig, mover_candidates, mover_matches
from association.matching.zoneindex import ZoneIndex
from tests.oracles.reference import brute_force_ellipse_pairs, ellipse_q, offset

ARC = np.radians(1 / 3600)  # an arcsec in radians, for tangent-plane offsets
RA0, DEC0 = 210.0, -20.0
# field centres: generic sky, RA wrap, near both poles and at one
CENTRES = [(150.0, 2.0), (359.9995, 20.0), (0.0002, -45.0), (45.0, 89.995), (300.0, -89.99)]
CENTRES.append((0.0, 90.0))
EXACT = 1e-6  # a fallback source error (arcsec) that leaves the gate the bare ellipse


def at(east_arcsec, north_arcsec):
    """Positions at (east, north) arcsec from (RA0, DEC0)."""
    return offset(
        RA0, DEC0, np.asarray(east_arcsec, float) * ARC, np.asarray(north_arcsec, float) * ARC
    )


def match(preds, src, object_cost=None, config=None, err=None):
    """Candidates and conclusive matches; preds are (east, north, a, b, pa) rows."""
    preds = np.atleast_2d(np.asarray(preds, float))
    pra, pdec = at(preds[:, 0], preds[:, 1])
    sra, sdec = at(*np.asarray(src, float).T)
    cand = mover_candidates(
        pra, pdec, preds[:, 2], preds[:, 3], preds[:, 4], sra, sdec, err, err, config
    )
    p, s = mover_matches(*cand, object_cost=object_cost, config=config)
    return cand, list(zip(p.tolist(), s.tolist(), strict=True))


def test_a_3_sigma_ellipse_beyond_60_arcsec_holds_its_source():
    # 1-sigma 25" x 10" along PA 30: the 3-sigma ellipse reaches 75"; the source
    # sits 62" out along the major axis, 2.5 sigma
    pa = np.radians(30)
    src = [[62 * np.sin(pa), 62 * np.cos(pa)]]
    _, pairs = match([[0, 0, 25, 10, 30]], src)
    assert pairs == [(0, 0)]
    # the old rule clamped the scaled axes to 60": 62" along the major axis was out
    pra, pdec = at([0], [0])
    sra, sdec = at(*np.asarray(src).T)
    assert ellipse_q(pra, pdec, [20.0], [10.0], [30.0], sra, sdec, scale=3.0)[0, 0] > 1


def test_no_cap_a_huge_ellipse_with_one_source_is_conclusive():
    _, pairs = match([[0, 0, 300, 300, 0]], [[500, -600]])  # 2.6 sigma, 13' away
    assert pairs == [(0, 0)]


def test_gate_is_the_scaled_error_ellipse_against_brute_force():
    rng = np.random.default_rng(5)
    n = 400
    src = rng.uniform(-40, 40, (n, 2))
    preds = [[0, 0, 8, 3, 20], [10, -5, 2, 1, 100], [-20, 20, 0.01, 0.01, 0]]
    cfg = MoverConfig(fallback_sigma_arcsec=1e-6)  # source errors out of the way
    (p, s, _), _ = match(preds, src, config=cfg)
    pr = np.asarray(preds)
    pra, pdec = at(pr[:, 0], pr[:, 1])
    sra, sdec = at(*src.T)
    a = np.maximum(pr[:, 2], cfg.min_axis_arcsec / cfg.scale)
    b = np.maximum(pr[:, 3], cfg.min_axis_arcsec / cfg.scale)
    q = ellipse_q(pra, pdec, a, b, pr[:, 4], sra, sdec, cfg.scale)
    want = {(i, j) for i, j in zip(*np.nonzero(q <= 1.0), strict=True)}
    got = set(zip(p.tolist(), s.tolist(), strict=True))
    assert all(abs(q[k] - 1.0) < 1e-6 for k in got ^ want)
    assert len(want) > 5


@st.composite
def fields(draw):
    centre = draw(st.sampled_from(CENTRES))
    n_pred = draw(st.integers(1, 40))
    n_src = draw(st.integers(1, 300))
    ratio = draw(st.sampled_from([1.0, 3.0, 50.0]))
    scale = draw(st.sampled_from([1.0, 3.0, 5.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = np.radians(60 / 3600)
    pra, pdec = offset(*centre, *rng.normal(0, spread, (2, n_pred)))
    sra, sdec = offset(*centre, *rng.normal(0, spread, (2, n_src)))
    a = rng.uniform(0.05, 25.0, n_pred)
    b = a / ratio
    pa = rng.uniform(-360, 360, n_pred)
    return pra, pdec, a, b, pa, sra, sdec, MoverConfig(scale, 1e-3, EXACT)


@settings(max_examples=40, deadline=None)
@given(fields())
def test_candidates_equal_brute_force(field):
    # on every sky (RA wrap, poles), every shape and size of ellipse, every scale
    pra, pdec, a, b, pa, sra, sdec, config = field
    p, s, _ = mover_candidates(pra, pdec, a, b, pa, sra, sdec, config=config)
    assert np.all(np.diff(p * len(sra) + s) > 0)  # sorted, no repeats
    floor = config.min_axis_arcsec / config.scale
    a, b = np.maximum(a, floor), np.maximum(b, floor)
    bp, bs = brute_force_ellipse_pairs(pra, pdec, a, b, pa, sra, sdec, config.scale)
    q = ellipse_q(pra, pdec, a, b, pa, sra, sdec, config.scale)
    ours = set(zip(p.tolist(), s.tolist(), strict=True))
    differ = ours ^ set(zip(bp.tolist(), bs.tolist(), strict=True))
    assert all(abs(q[k] - 1.0) < 1e-6 for k in differ)


@pytest.mark.parametrize("centre", CENTRES)
@pytest.mark.parametrize("ratio", [1.0, 50.0])
def test_rotated_elongated_ellipse_boundaries(centre, ratio):
    # sources just inside and just outside both ends of both axes, every PA
    config = MoverConfig(scale=1.0, min_axis_arcsec=0.01, fallback_sigma_arcsec=EXACT)
    major, minor = 20.0, 20.0 / ratio
    for pa in np.arange(0.0, 360.0, 7.5):
        t = np.radians(pa)
        along = np.array([np.sin(t), np.cos(t)])  # (east, north) of the major axis
        across = np.array([np.cos(t), -np.sin(t)])
        offsets = []
        for axis, length in ((along, major), (across, minor)):
            for f in (0.99, -0.99, 1.01, -1.01):
                offsets.append(axis * f * np.radians(length / 3600))
        sra, sdec = offset(*centre, *np.array(offsets).T)
        one = np.ones(1)
        _, s, _ = mover_candidates(
            one * centre[0], one * centre[1], one * major, one * minor, one * pa, sra, sdec,
            config=config,
        )  # fmt: skip
        assert s.tolist() == [0, 1, 4, 5], pa


def test_prebuilt_index_and_empty_inputs():
    rng = np.random.default_rng(3)
    sra, sdec = offset(20.0, -10.0, *rng.normal(0, 1e-4, (2, 500)))
    pra, pdec = offset(20.0, -10.0, *rng.normal(0, 1e-4, (2, 30)))
    a, b, pa = np.full(30, 4.0), np.full(30, 1.0), rng.uniform(0, 180, 30)
    index = ZoneIndex.build(sra, sdec, np.arange(500))
    got = mover_candidates(pra, pdec, a, b, pa, sra, sdec, index=index)
    want = mover_candidates(pra, pdec, a, b, pa, sra, sdec)
    assert all(np.array_equal(x, y) for x, y in zip(got, want, strict=True))
    assert len(got[0]) > 0
    empty = np.empty(0)
    for p, s, c in (
        mover_candidates(empty, empty, empty, empty, empty, sra, sdec),
        mover_candidates(pra, pdec, a, b, pa, empty, empty),
    ):
        assert p.size == s.size == c.size == 0


def test_a_variable_star_inside_a_large_ellipse_is_not_the_asteroid():
    star = [15.0, 5.0]  # 0.8 sigma from the prediction, a known variable Object
    err = np.full(1, 0.05 / 3600)
    cost_star = position_cost([0], [0], *at(*np.array([star]).T), *at([15.01], [5.0]), err, err)
    no_object = np.array([np.inf])
    _, pairs = match([[0, 0, 20, 20, 0]], [star], object_cost=no_object, err=err)
    assert pairs == [(0, 0)]  # without the catalogue's word it would be taken
    _, pairs = match([[0, 0, 20, 20, 0]], [star], object_cost=cost_star, err=err)
    assert pairs == []
    # with the asteroid detected too, the asteroid is taken and the star left alone
    err2 = np.full(2, 0.05 / 3600)
    costs = np.r_[cost_star, np.inf]
    _, pairs = match([[0, 0, 20, 20, 0]], [star, [-30.0, 12.0]], object_cost=costs, err=err2)
    assert pairs == [(0, 1)]
    # a small ellipse right on the source beats a variable Object 0.8" away
    far = position_cost([0], [0], *at([0.0], [0.0]), *at([0.8], [0.0]), err, err)
    _, pairs = match([[0, 0, 0.3, 0.3, 0]], [[0.0, 0.0]], object_cost=far, err=err)
    assert pairs == [(0, 0)]


def test_ambiguity_large_ellipse_with_two_equal_sources_is_not_conclusive():
    # two sources at the same Mahalanobis distance in a 20" ellipse: a coin toss
    _, pairs = match([[0, 0, 20, 20, 0]], [[20, 0], [-20, 0.1]])
    assert pairs == []
    # a clearly better one (0.2 sigma against 2.5 sigma) is taken
    _, pairs = match([[0, 0, 20, 20, 0]], [[4, 0], [50, 0]])
    assert pairs == [(0, 0)]
    # with a larger margin even that is too close to call
    _, pairs = match([[0, 0, 20, 20, 0]], [[4, 0], [50, 0]], config=MoverConfig(ambiguity_margin=5))
    assert pairs == []


def test_two_predictions_share_out_two_sources_one_to_one():
    # both sources lie in both ellipses; each prediction is much nearer one
    preds = [[0, 0, 5, 5, 0], [10, 0, 5, 5, 0]]
    _, pairs = match(preds, [[0.5, 0], [9.5, 0]])
    assert pairs == [(0, 0), (1, 1)]
    # one source between two equal predictions: which one is ambiguous
    _, pairs = match(preds, [[5.0, 0]])
    assert pairs == []


def test_order_of_the_inputs_does_not_matter():
    rng = np.random.default_rng(11)
    preds = np.c_[rng.uniform(-60, 60, (30, 2)), rng.uniform(1, 10, 30), np.ones(30), np.zeros(30)]
    preds[:, 3] = preds[:, 2] * 0.5
    src = np.r_[preds[:, :2] + rng.normal(0, 1, (30, 2)), rng.uniform(-80, 80, (100, 2))]
    (_, _, _), pairs = match(preds, src)
    perm = rng.permutation(len(src))
    (_, _, _), again = match(preds, src[perm])
    assert sorted((p, int(perm[s])) for p, s in again) == sorted(pairs)
    assert len(pairs) >= 20


def test_bad_predictions_are_refused():
    with pytest.raises(ValueError, match="finite"):
        match([[0, 0, np.nan, 1, 0]], [[0, 0]])
    with pytest.raises(ValueError, match="> 0"):
        MoverConfig(scale=0)
