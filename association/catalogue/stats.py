"""Object statistics from DIASources: the compiled update of Objects, and new Objects.

Arithmetic depends only on (Object rows, DIASources in canonical order), so
every copy of a chunk updated with the same DIASources stays byte-identical.
"""

from __future__ import annotations

import numba
import numpy as np

from association.catalogue.records import I8
from association.columns import DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE


@numba.njit(cache=True)
def _update_kernel(
    starts, ra, dec, n, first, last, ndata, mean, m2, s_ra, s_dec, s_mjd, s_band, s_flux
):
    """Fold the DIASources ``starts[j]:starts[j+1]`` into Object j (arrays updated in place).

    Position: the count-weighted mean unit vector; flux: Welford per band,
    skipping unknown bands and non-finite fluxes; all in float64.
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
        n[j] += starts[j + 1] - starts[j]
        a = np.degrees(np.arctan2(y, x))
        if a < 0.0:
            a += 360.0
        if a >= 360.0:
            a -= 360.0
        ra[j] = a
        dec[j] = np.degrees(np.arctan2(z, np.hypot(x, y)))


def apply_detections(
    rows: np.ndarray, starts: np.ndarray, src: np.ndarray, variable_min: int
) -> None:
    """Update Object ``rows`` in place with canonically sorted ``src`` (Object j: starts[j:j+2])."""
    ra = rows["ra"].astype("f8")
    dec = rows["dec"].astype("f8")
    n = rows["nDiaSources"].astype(I8)
    first = rows["firstMjd"].astype("f8")
    last = rows["lastMjd"].astype("f8")
    ndata = rows["psfFluxNdata"].astype(I8)
    mean = rows["psfFluxMean"].astype("f8")
    m2 = rows["psfFluxM2"].astype("f8")
    _update_kernel(
        starts.astype(I8),
        ra,
        dec,
        n,
        first,
        last,
        ndata,
        mean,
        m2,
        src["ra"].astype("f8"),
        src["dec"].astype("f8"),
        src["midpointMjdTai"].astype("f8"),
        src["band"].astype(I8),
        src["psfFlux"].astype("f8"),
    )
    rows["ra"] = ra
    rows["dec"] = dec
    rows["nDiaSources"] = n
    rows["firstMjd"] = first
    rows["lastMjd"] = last
    rows["psfFluxNdata"] = ndata
    rows["psfFluxMean"] = mean
    rows["psfFluxM2"] = m2
    rows["isVariable"] = n >= variable_min


def new_objects(src: np.ndarray, variable_min: int) -> np.ndarray:
    """Object rows created from single DIASources (id = diaSourceId)."""
    rows = np.zeros(len(src), OBJECT_DTYPE)
    rows["diaObjectId"] = src["diaSourceId"]
    rows["ra"] = src["ra"]
    rows["dec"] = src["dec"]
    rows["fine"] = src["fine"]
    rows["nDiaSources"] = 1
    rows["firstMjd"] = src["midpointMjdTai"]
    rows["lastMjd"] = src["midpointMjdTai"]
    band = src["band"].astype(I8)
    flux = src["psfFlux"]
    ok = (band >= 0) & (band < NBANDS) & np.isfinite(flux)
    at = np.flatnonzero(ok)
    ndata = np.zeros((len(src), NBANDS), "i2")
    mean = np.zeros((len(src), NBANDS), "f4")
    ndata[at, band[at]] = 1
    mean[at, band[at]] = flux[at]
    rows["psfFluxNdata"] = ndata
    rows["psfFluxMean"] = mean
    rows["isVariable"] = variable_min <= 1
    return rows


def warm_up() -> None:
    """Compile (or load from numba's cache) the update kernel now, not in the first visit."""
    rows = np.zeros(1, OBJECT_DTYPE)
    apply_detections(rows, np.array([0, 1]), np.zeros(1, DIASOURCE_DTYPE), 1)
