"""Variability from the flux history: a per-band chi^2 of the fluxes about their mean.

An Object is variable when, in some band, it has at least ``min_detections``
DIASources, its DIASources span at least ``min_span_days`` (first to last,
over all bands), and the chi^2 of that band's fluxes about their
inverse-variance weighted mean is significant: with ``k = n - 1`` degrees of
freedom, the Wilson-Hilferty transform

    z = ((chi2 / k) ** (1/3) - (1 - 2 / (9k))) / sqrt(2 / (9k))

is a standard normal deviate for a constant source, and the band counts when
``z >= min_significance``. Two detections of an asteroid 80 s apart have
neither the detections nor the span.

The chi^2 is exact: the catalogue keeps, per band, the weighted running
statistics `west_step` maintains (West 1979) in the Object columns
``psfFluxWMean`` (nJy, inverse-variance weighted mean), ``psfFluxMeanErr``
(nJy, ``1 / sqrt(sum 1/err^2)``) and ``psfFluxChi2`` (``sum ((flux -
psfFluxWMean) / err) ** 2``), as Rubin's DiaObject names them; NaN in all
three means no flux with a usable error yet. `chi2_from_welford` estimates
it from the unweighted Welford ``psfFluxM2`` where only that is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np


@dataclass(frozen=True)
class VariabilityConfig:
    """When the flux history says an Object is variable.

    Parameters
    ----------
    min_detections : int
        Least DIASources in a band for that band's chi^2 to count (>= 2).
    min_span_days : float
        Least time from the Object's first to its last DIASource (1 hour:
        back-to-back exposures, and the two of a 33-minute pair, are not enough).
    min_significance : float
        Least Wilson-Hilferty significance (Gaussian sigmas) of the chi^2.
    """

    min_detections: int = 3
    min_span_days: float = 1.0 / 24.0
    min_significance: float = 5.0

    def __post_init__(self) -> None:
        if self.min_detections < 2:
            raise ValueError(f"min_detections must be >= 2, got {self.min_detections}")
        if not (self.min_span_days >= 0 and np.isfinite(self.min_significance)):
            raise ValueError(f"need min_span_days >= 0 and a finite significance: {self}")


def significance(chi2: np.ndarray, ndata: np.ndarray) -> np.ndarray:
    """Wilson-Hilferty significance of ``chi2`` with ``ndata - 1`` degrees of freedom.

    NaN where ``ndata < 2``.
    """
    chi2 = np.asarray(chi2, dtype=np.float64)
    k = np.asarray(ndata, dtype=np.float64) - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        h = 2.0 / (9.0 * k)
        z = (np.cbrt(np.maximum(chi2, 0.0) / k) - (1.0 - h)) / np.sqrt(h)
    return np.where(k >= 1.0, z, np.nan)


def is_variable(
    ndata: np.ndarray,
    chi2: np.ndarray,
    first_mjd: np.ndarray,
    last_mjd: np.ndarray,
    config: VariabilityConfig | None = None,
) -> np.ndarray:
    """Which Objects the flux history says are variable.

    Parameters
    ----------
    ndata : int array (n, bands)
        DIASources with a flux per band (``psfFluxNdata``).
    chi2 : float array (n, bands)
        Chi^2 of each band's fluxes about their mean (``psfFluxChi2``, or
        `chi2_from_welford`).
    first_mjd, last_mjd : float arrays (n,)
        The Object's first and last DIASource.
    config : VariabilityConfig, optional

    Returns
    -------
    bool array (n,)
    """
    config = config or VariabilityConfig()
    ndata = np.asarray(ndata)
    chi2 = np.asarray(chi2, dtype=np.float64)
    if ndata.shape != chi2.shape or ndata.ndim != 2:
        raise ValueError(f"ndata {ndata.shape} and chi2 {chi2.shape} must be (n, bands)")
    span = np.asarray(last_mjd, dtype=np.float64) - np.asarray(first_mjd, dtype=np.float64)
    if span.shape != ndata.shape[:1]:
        raise ValueError(f"first/last MJD have shape {span.shape}, expected ({len(ndata)},)")
    z = significance(chi2, ndata)
    band_ok = (ndata >= config.min_detections) & (z >= config.min_significance)
    return band_ok.any(axis=1) & (span >= config.min_span_days)


def chi2_from_welford(m2: np.ndarray, flux_err: np.ndarray) -> np.ndarray:
    """Chi^2 estimated from the unweighted Welford ``psfFluxM2`` and a flux error per band.

    Exact when every flux of a band has the error ``flux_err``; NaN where the
    error is not a positive number.
    """
    m2 = np.asarray(m2, dtype=np.float64)
    err = np.asarray(flux_err, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(err > 0, m2 / (err * err), np.nan)


@nb.njit(cache=True, nogil=True, inline="always")
def west_step(wsum, wmean, chi2, flux, err):
    """``(wsum, wmean, chi2, used)`` after adding one flux to a band's weighted statistics.

    West's recurrence: exact and stable. A flux or error that is not finite,
    or an error <= 0, leaves them as they were (``used`` False).
    """
    if not (err > 0.0 and np.isfinite(err) and np.isfinite(flux)):
        return wsum, wmean, chi2, False
    w = 1.0 / (err * err)
    total = wsum + w
    delta = flux - wmean
    mean = wmean + delta * (w / total)
    return total, mean, chi2 + w * delta * (flux - mean), True


@nb.njit(cache=True, nogil=True)
def _west(obj, band, flux, err, ndata, wsum, wmean, chi2):
    for k in range(obj.size):
        i = obj[k]
        b = band[k]
        wsum[i, b], wmean[i, b], chi2[i, b], used = west_step(
            wsum[i, b], wmean[i, b], chi2[i, b], flux[k], err[k]
        )
        if used:
            ndata[i, b] += 1


def update_weighted(
    obj: np.ndarray,
    band: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    ndata: np.ndarray,
    wsum: np.ndarray,
    wmean: np.ndarray,
    chi2: np.ndarray,
) -> None:
    """Add fluxes to per-band weighted statistics, in place, in the order given.

    ``(obj[k], band[k])`` names the Object row and band of flux ``k``;
    ``wsum`` is ``sum 1/err^2`` (``psfFluxMeanErr ** -2``), ``wmean`` the
    weighted mean and ``chi2`` the weighted sum of squared deviations from
    it, all (n, bands) float64, updated by West's recurrence, which is exact
    and stable. A flux or error that is not finite, or an error <= 0, is
    skipped.
    """
    obj = np.ascontiguousarray(obj, dtype=np.int64)
    band = np.ascontiguousarray(band, dtype=np.int64)
    flux = np.ascontiguousarray(flux, dtype=np.float64)
    flux_err = np.ascontiguousarray(flux_err, dtype=np.float64)
    if not (obj.shape == band.shape == flux.shape == flux_err.shape and obj.ndim == 1):
        raise ValueError("obj, band, flux and flux_err must be 1-d arrays of one length")
    shape = ndata.shape
    for name, a in (("wsum", wsum), ("wmean", wmean), ("chi2", chi2)):
        if a.shape != shape or a.dtype != np.float64:
            raise ValueError(f"{name} must be float64 of shape {shape}")
    if obj.size and not (
        obj.min() >= 0 and obj.max() < shape[0] and band.min() >= 0 and band.max() < shape[1]
    ):
        raise ValueError("an Object row or band lies outside the statistics")
    _west(obj, band, flux, flux_err, ndata, wsum, wmean, chi2)
