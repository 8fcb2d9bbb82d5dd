"""Variability from the flux history: chi^2 about the weighted mean, detections, span."""

from __future__ import annotations

import numpy as np
import pytest

from association.catalogue.variability import (
    VariabilityConfig,
    chi2_from_welford,
    is_variable,
    significance,
    update_weighted,
)
from association.columns import NBANDS

R = 2  # the r band


def stats(n_obj):
    return (
        np.zeros((n_obj, NBANDS), np.int16),
        np.zeros((n_obj, NBANDS)),
        np.zeros((n_obj, NBANDS)),
        np.zeros((n_obj, NBANDS)),
    )


def history(obj, flux, err, band=R):
    """Weighted statistics of the given detections (one list per Object)."""
    ndata, wsum, wmean, chi2 = stats(max(obj) + 1)
    update_weighted(np.asarray(obj), np.full(len(obj), band), flux, err, ndata, wsum, wmean, chi2)
    return ndata, wsum, wmean, chi2


def test_west_update_equals_the_direct_weighted_chi2():
    rng = np.random.default_rng(3)
    flux = rng.normal(1000, 300, 50)
    err = rng.uniform(10, 100, 50)
    obj = rng.integers(0, 4, 50)
    ndata, wsum, wmean, chi2 = history(obj.tolist(), flux, err)
    for i in range(4):
        f, e = flux[obj == i], err[obj == i]
        w = 1 / e**2
        mean = (w * f).sum() / w.sum()
        assert ndata[i, R] == f.size
        assert wsum[i, R] == pytest.approx(w.sum())
        assert wmean[i, R] == pytest.approx(mean)
        assert chi2[i, R] == pytest.approx((w * (f - mean) ** 2).sum())
    assert (ndata[:, :R] == 0).all() and (chi2[:, R + 1 :] == 0).all()


def test_bad_fluxes_are_skipped():
    ndata, _, wmean, chi2 = history([0, 0, 0], np.array([10.0, np.nan, 12.0]), [1.0, 1.0, 0.0])
    assert ndata[0, R] == 1 and wmean[0, R] == 10.0 and chi2[0, R] == 0.0


def test_two_asteroid_detections_80_s_apart_are_not_variable():
    # bright, and its flux changed by 20 sigma between the two (it rotates)
    ndata, _, _, chi2 = history([0, 0], np.array([5000.0, 5400.0]), [10.0, 10.0])
    t0 = 60217.6
    assert not is_variable(ndata, chi2, [t0], [t0 + 80 / 86400])[0]
    # not even a third detection 33 minutes later would do: the span is too short
    ndata, _, _, chi2 = history([0, 0, 0], np.array([5000.0, 5400.0, 4600.0]), [10.0] * 3)
    assert not is_variable(ndata, chi2, [t0], [t0 + 33 / 1440])[0]
    # the same history over two hours is variable
    assert is_variable(ndata, chi2, [t0], [t0 + 2 / 24])[0]


def test_a_variable_star_is_and_a_constant_star_is_not():
    rng = np.random.default_rng(8)
    n = 12
    err = np.full(n, 50.0)
    const = 3000 + rng.normal(0, 50, n)  # constant within its errors
    var = 3000 + 800 * np.sin(np.arange(n))  # 16 sigma amplitude
    ndata, _, _, chi2 = history([0] * n + [1] * n, np.r_[const, var], np.r_[err, err])
    got = is_variable(ndata, chi2, [60000.0, 60000.0], [60030.0, 60030.0])
    assert got.tolist() == [False, True]


def test_significance_is_gaussian_for_constant_sources():
    rng = np.random.default_rng(1)
    k = 5
    chi2 = rng.chisquare(k, 200_000)
    z = significance(chi2, np.full(chi2.size, k + 1))
    assert np.mean(z >= 3.0) == pytest.approx(1.35e-3, rel=0.3)
    assert np.isnan(significance([1.0], [1]))[0]


def test_config_and_welford_estimate():
    cfg = VariabilityConfig(min_detections=2, min_span_days=0.0, min_significance=3.0)
    ndata, _, _, chi2 = history([0, 0], np.array([5000.0, 5400.0]), [10.0, 10.0])
    assert is_variable(ndata, chi2, [0.0], [0.0], cfg)[0]  # a looser setting takes it
    # the unweighted M2 with equal errors gives the same chi^2
    m2 = np.zeros((1, NBANDS))
    m2[0, R] = ((np.array([5000.0, 5400.0]) - 5200.0) ** 2).sum()
    assert chi2_from_welford(m2, 10.0)[0, R] == pytest.approx(chi2[0, R])
    with pytest.raises(ValueError, match="min_detections"):
        VariabilityConfig(min_detections=1)
    with pytest.raises(ValueError, match=r"\(n, bands\)"):
        is_variable(np.zeros(3), np.zeros(3), [0.0], [0.0])
