"""Column layouts shared by the catalogue, the kernels, storage and alerts.

In memory everything is columnar numpy. Bands are small ints into `BANDS`.
"""

from __future__ import annotations

import numpy as np

BANDS = "ugrizy"
"""Band names; a band is stored as its index into this string."""

NBANDS = len(BANDS)

DIASOURCE_DTYPE = np.dtype(
    [
        ("diaSourceId", "i8"),
        ("visit", "i8"),  # fov id of the visit that detected it
        ("diaObjectId", "i8"),  # 0 when it made or matched no Object
        ("ssObjectId", "i8"),  # 0 unless matched to a moving object
        ("ra", "f8"),  # deg
        ("dec", "f8"),  # deg
        ("raErr", "f4"),  # deg, NaN if not given
        ("decErr", "f4"),  # deg, NaN if not given
        ("midpointMjdTai", "f8"),
        ("band", "i1"),  # index into BANDS
        ("psfFlux", "f4"),  # nJy
        ("psfFluxErr", "f4"),  # nJy
        ("snr", "f4"),  # NaN if not given
        ("fine", "i8"),  # fine HEALPix NESTED index of (ra, dec)
    ]
)
"""A DIASource in memory (new ones from a file, and the recent ones of each Object)."""

OBJECT_DTYPE = np.dtype(
    [
        ("diaObjectId", "i8"),  # = diaSourceId of the DIASource that created it
        ("ra", "f8"),  # running mean position, deg
        ("dec", "f8"),
        ("raErr", "f4"),  # deg, on-sky 1-sigma error of the mean position; NaN if unknown
        ("decErr", "f4"),
        ("fine", "i8"),  # fine HEALPix NESTED index of the creating position; never moves
        ("nDiaSources", "i4"),
        ("firstMjd", "f8"),
        ("lastMjd", "f8"),
        ("psfFluxNdata", "i2", (NBANDS,)),
        ("psfFluxMean", "f4", (NBANDS,)),  # nJy, running mean per band
        ("psfFluxM2", "f4", (NBANDS,)),  # Welford sum of squared deviations per band
        # inverse-variance weighted statistics per band (NaN: no flux with an error yet)
        ("psfFluxWMean", "f4", (NBANDS,)),  # nJy, weighted mean
        ("psfFluxMeanErr", "f4", (NBANDS,)),  # nJy, its error, 1 / sqrt(sum 1 / err^2)
        ("psfFluxChi2", "f4", (NBANDS,)),  # sum ((flux - psfFluxWMean) / err)^2
        ("isVariable", "?"),
    ]
)
"""An Object in memory: 193 bytes a row."""


def band_index(names: np.ndarray) -> np.ndarray:
    """Map band names (``'u'``..``'y'``) to their index (int8); -1 for an unknown name."""
    names = np.asarray(names)
    if names.dtype == np.dtype("<U1"):  # one code point each: a lookup table
        lut = np.full(128, -1, dtype=np.int8)
        lut[[ord(b) for b in BANDS]] = np.arange(NBANDS)
        codes = names.view(np.uint32)
        return np.where(codes < 128, lut[np.minimum(codes, 127)], -1).astype(np.int8)
    uniq, inverse = np.unique(names.astype(str), return_inverse=True)
    lut = np.array([BANDS.index(u) if len(u) == 1 and u in BANDS else -1 for u in uniq], "i1")
    return lut[inverse.ravel()] if len(uniq) else np.empty(0, "i1")


MATCH_COLUMNS = ("ra", "dec", "raErr", "decErr", "diaObjectId", "isVariable")
"""The Object columns the cross-match reads (and margin strips keep)."""
