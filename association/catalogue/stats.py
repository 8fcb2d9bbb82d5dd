"""Object statistics from DIASources: the compiled update of Objects, and new Objects.

Arithmetic depends only on (Object rows, DIASources in canonical order), so
every copy of a chunk updated with the same DIASources stays byte-identical.
"""

from __future__ import annotations

import numba
import numpy as np

from association.catalogue.variability import VariabilityConfig, is_variable, west_step
from association.columns import DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE
from association.records import I8


@numba.njit(cache=True)
def _update_kernel(
    starts,
    ra,
    dec,
    var_ra,
    var_dec,
    n,
    first,
    last,
    ndata,
    mean,
    m2,
    wsum,
    wmean,
    chi2,
    s_ra,
    s_dec,
    s_ra_err,
    s_dec_err,
    s_mjd,
    s_band,
    s_flux,
    s_flux_err,
):
    """Fold the DIASources ``starts[j]:starts[j+1]`` into Object j (arrays updated in place).

    Position: the count-weighted mean unit vector, and the variance of that
    mean per axis, ``((n-1)^2 var + err^2) / n^2`` per DIASource (NaN once
    an error is unknown); flux: Welford per band, skipping unknown bands and
    non-finite fluxes, and West's weighted statistics, skipping unusable
    errors too; all in float64.
    """
    d2r = np.pi / 180.0
    for j in range(len(starts) - 1):
        w = float(n[j])
        r = ra[j] * d2r
        d = dec[j] * d2r
        x = w * np.cos(d) * np.cos(r)
        y = w * np.cos(d) * np.sin(r)
        z = w * np.sin(d)
        for i in range(starts[j], starts[j + 1]):
            r = s_ra[i] * d2r
            d = s_dec[i] * d2r
            x += np.cos(d) * np.cos(r)
            y += np.cos(d) * np.sin(r)
            z += np.sin(d)
            k = w + (i - starts[j])  # DIASources in the mean before this one
            var_ra[j] = (k * k * var_ra[j] + s_ra_err[i] * s_ra_err[i]) / ((k + 1) * (k + 1))
            var_dec[j] = (k * k * var_dec[j] + s_dec_err[i] * s_dec_err[i]) / ((k + 1) * (k + 1))
            first[j] = min(first[j], s_mjd[i])
            last[j] = max(last[j], s_mjd[i])
            b = s_band[i]
            f = s_flux[i]
            if 0 <= b < ndata.shape[1] and np.isfinite(f):
                c = ndata[j, b] + 1
                delta = f - mean[j, b]
                mean[j, b] += delta / c
                m2[j, b] += delta * (f - mean[j, b])
                ndata[j, b] = c
                wsum[j, b], wmean[j, b], chi2[j, b], _ = west_step(
                    wsum[j, b], wmean[j, b], chi2[j, b], f, s_flux_err[i]
                )
        n[j] += starts[j + 1] - starts[j]
        a = np.degrees(np.arctan2(y, x))
        if a < 0.0:
            a += 360.0
        if a >= 360.0:
            a -= 360.0
        ra[j] = a
        dec[j] = np.degrees(np.arctan2(z, np.hypot(x, y)))


def _weighted(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Working (sum of weights, weighted mean, chi^2) per band from the stored columns."""
    err = rows["psfFluxMeanErr"].astype("f8")
    known = (err > 0) & np.isfinite(err)
    with np.errstate(divide="ignore"):
        wsum = np.where(known, 1.0 / (err * err), 0.0)
    wmean = np.where(known, rows["psfFluxWMean"].astype("f8"), 0.0)
    chi2 = np.where(known, rows["psfFluxChi2"].astype("f8"), 0.0)
    return wsum, wmean, chi2


def _store_weighted(
    rows: np.ndarray, wsum: np.ndarray, wmean: np.ndarray, chi2: np.ndarray
) -> None:
    known = wsum > 0
    with np.errstate(divide="ignore"):
        rows["psfFluxMeanErr"] = np.where(known, 1.0 / np.sqrt(wsum), np.nan)
    rows["psfFluxWMean"] = np.where(known, wmean, np.nan)
    rows["psfFluxChi2"] = np.where(known, chi2, np.nan)


def apply_detections(
    rows: np.ndarray, starts: np.ndarray, src: np.ndarray, variability: VariabilityConfig
) -> None:
    """Update Object ``rows`` in place with canonically sorted ``src`` (Object j: starts[j:j+2]).

    An Object becomes variable when its flux history shows it
    (`association.catalogue.variability.is_variable`) and stays so.
    """
    ra = rows["ra"].astype("f8")
    dec = rows["dec"].astype("f8")
    var_ra = np.square(rows["raErr"].astype("f8"))
    var_dec = np.square(rows["decErr"].astype("f8"))
    n = rows["nDiaSources"].astype(I8)
    first = rows["firstMjd"].astype("f8")
    last = rows["lastMjd"].astype("f8")
    ndata = rows["psfFluxNdata"].astype(I8)
    mean = rows["psfFluxMean"].astype("f8")
    m2 = rows["psfFluxM2"].astype("f8")
    wsum, wmean, chi2 = _weighted(rows)
    _update_kernel(
        starts.astype(I8),
        ra,
        dec,
        var_ra,
        var_dec,
        n,
        first,
        last,
        ndata,
        mean,
        m2,
        wsum,
        wmean,
        chi2,
        src["ra"].astype("f8"),
        src["dec"].astype("f8"),
        src["raErr"].astype("f8"),
        src["decErr"].astype("f8"),
        src["midpointMjdTai"].astype("f8"),
        src["band"].astype(I8),
        src["psfFlux"].astype("f8"),
        src["psfFluxErr"].astype("f8"),
    )
    rows["ra"] = ra
    rows["dec"] = dec
    rows["raErr"] = np.sqrt(var_ra)
    rows["decErr"] = np.sqrt(var_dec)
    rows["nDiaSources"] = n
    rows["firstMjd"] = first
    rows["lastMjd"] = last
    rows["psfFluxNdata"] = ndata
    rows["psfFluxMean"] = mean
    rows["psfFluxM2"] = m2
    _store_weighted(rows, wsum, wmean, chi2)
    shown = is_variable(ndata, rows["psfFluxChi2"], first, last, variability)
    rows["isVariable"] |= shown


def new_objects(src: np.ndarray) -> np.ndarray:
    """Object rows created from single DIASources (id = diaSourceId); none is variable."""
    rows = np.zeros(len(src), OBJECT_DTYPE)
    rows["diaObjectId"] = src["diaSourceId"]
    rows["ra"] = src["ra"]
    rows["dec"] = src["dec"]
    rows["raErr"] = src["raErr"]
    rows["decErr"] = src["decErr"]
    rows["fine"] = src["fine"]
    rows["nDiaSources"] = 1
    rows["firstMjd"] = src["midpointMjdTai"]
    rows["lastMjd"] = src["midpointMjdTai"]
    band = src["band"].astype(I8)
    flux = src["psfFlux"]
    err = src["psfFluxErr"]
    ok = (band >= 0) & (band < NBANDS) & np.isfinite(flux)
    at = np.flatnonzero(ok)
    ndata = np.zeros((len(src), NBANDS), "i2")
    mean = np.zeros((len(src), NBANDS), "f4")
    ndata[at, band[at]] = 1
    mean[at, band[at]] = flux[at]
    rows["psfFluxNdata"] = ndata
    rows["psfFluxMean"] = mean
    weighted = np.flatnonzero(ok & (err > 0) & np.isfinite(err))
    wmean = np.full((len(src), NBANDS), np.nan, "f4")
    merr = np.full((len(src), NBANDS), np.nan, "f4")
    chi2 = np.full((len(src), NBANDS), np.nan, "f4")
    wmean[weighted, band[weighted]] = flux[weighted]
    merr[weighted, band[weighted]] = err[weighted]
    chi2[weighted, band[weighted]] = 0.0
    rows["psfFluxWMean"] = wmean
    rows["psfFluxMeanErr"] = merr
    rows["psfFluxChi2"] = chi2
    rows["isVariable"] = False
    return rows


def warm_up() -> None:
    """Compile (or load from numba's cache) the update kernel now, not in the first visit."""
    rows = np.zeros(1, OBJECT_DTYPE)
    apply_detections(rows, np.array([0, 1]), np.zeros(1, DIASOURCE_DTYPE), VariabilityConfig())
