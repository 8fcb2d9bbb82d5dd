"""Zone index over sky positions: nearest-object and all-pairs cross-match."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from association.matching import zonekernels

OCCUPANCY = 8
"""Mean objects per index cell that the build aims for."""

ROW_MASK = zonekernels.ROW_MASK
"""``rows & ROW_MASK`` is the input row of an index entry."""

_SAMPLE = 1 << 16  # rows sampled to shape the index
_MIN_GAP_BINS = 3  # an RA gap narrower than this many histogram bins is no gap


@dataclass(frozen=True, eq=False)
class ZoneIndex:
    """Objects listed by (zone, RA column) cell, with a directory of cell offsets.

    Build with `ZoneIndex.build`. ``ra``, ``dec`` and ``ids`` are the input
    columns (input order). ``rows`` lists the input rows cell by cell, each
    packed with where the object lies in its cell (``rows & ROW_MASK`` is
    the row); ``offsets[c]:offsets[c + 1]`` is cell ``c``'s part of it.
    """

    ra: np.ndarray
    dec: np.ndarray
    ids: np.ndarray
    rows: np.ndarray
    offsets: np.ndarray
    geometry: np.ndarray
    """``ra0, ra_lo, ra_hi, col_width, zone0, zone_height, n_zones, n_cols`` (deg)."""

    @property
    def zone_height_deg(self) -> float:
        """Height of a zone in degrees."""
        return float(self.geometry[5])

    def __len__(self) -> int:
        return int(self.rows.size)

    @classmethod
    def build(
        cls,
        ra: np.ndarray,
        dec: np.ndarray,
        ids: np.ndarray,
        zone_height_deg: float | None = None,
        copy: bool = True,
    ) -> ZoneIndex:
        """Index objects at ``ra``, ``dec`` (deg) carrying ``ids``.

        Parameters
        ----------
        ra, dec : array of float
            Positions in degrees; ``dec`` in [-90, 90].
        ids : array of int
            Object ids, used only to break distance ties.
        zone_height_deg : float, optional
            Zone height; about the match radius is the classic choice. By
            default cells are made about square and hold ~`OCCUPANCY`
            objects, which builds and queries faster. Zones are widened if
            there would be far more zones than objects.
        copy : bool
            Copy the three columns. With False, columns that already are
            contiguous float64 (int64 for ids) are kept by reference, as
            scipy's ``cKDTree`` does: they must not change while the index
            is in use.
        """
        as_col = np.array if copy else np.ascontiguousarray
        ra = as_col(ra, dtype=np.float64)
        dec = as_col(dec, dtype=np.float64)
        ids = as_col(ids, dtype=np.int64)
        if not (ra.shape == dec.shape == ids.shape and ra.ndim == 1):
            raise ValueError("ra, dec and ids must be 1-d arrays of one length")
        if zone_height_deg is not None and not zone_height_deg > 0:
            raise ValueError(f"zone_height_deg must be > 0, got {zone_height_deg}")
        n = ra.size
        if n >= 2**31:
            raise ValueError(f"at most 2**31 - 1 objects, got {n}")
        hist, dmin, dmax = zonekernels.sample_stats(ra, dec, max(1, n // _SAMPLE))
        geo = _geometry(n, hist, float(dmin), float(dmax), zone_height_deg)
        rows = np.empty(n, np.int64)
        offsets = np.empty(int(geo[6]) * int(geo[7]) + 1, np.int64)
        nt = numba.get_num_threads()
        bad = zonekernels.build_cells(ra, dec, geo, nt, np.empty(n, np.int64), rows, offsets)
        if bad:
            raise ValueError(f"{bad} positions are not finite or have |dec| > 90")
        return cls(ra, dec, ids, rows, offsets, geo)

    def _queries(self, ra, dec, radius_arcsec):
        ra = np.ascontiguousarray(ra, dtype=np.float64)
        dec = np.ascontiguousarray(dec, dtype=np.float64)
        if ra.shape != dec.shape or ra.ndim != 1:
            raise ValueError("ra and dec must be 1-d arrays of one length")
        if not (np.isfinite(ra).all() and (np.abs(dec) <= 90.0).all()):
            raise ValueError("query positions must be finite with |dec| <= 90")
        if not (np.isfinite(radius_arcsec) and 0 < radius_arcsec < 3600 * 90):
            raise ValueError(f"radius_arcsec must be in (0, 90 deg), got {radius_arcsec}")
        return ra, dec, float(radius_arcsec) / 3600.0

    def nearest(
        self, ra: np.ndarray, dec: np.ndarray, radius_arcsec: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest object within the radius of each query point.

        Returns
        -------
        obj_row : int64 array
            Row into the build's input arrays, -1 where nothing is in reach;
            of equally distant objects, the one with the smaller id.
        dist_arcsec : float64 array
            Its distance, NaN where ``obj_row`` is -1.
        """
        ra, dec, r = self._queries(ra, dec, radius_arcsec)
        return zonekernels.query_nearest(
            ra, dec, r, self.geometry, self.ra, self.dec, self.rows, self.ids, self.offsets
        )

    def pairs(
        self, ra: np.ndarray, dec: np.ndarray, radius_arcsec: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (query, object) pairs within the radius, sorted by (query_idx, obj_row).

        Returns
        -------
        query_idx, obj_row : int64 arrays
            Query index and row into the build's input arrays.
        dist_arcsec : float64 array
        """
        ra, dec, r = self._queries(ra, dec, radius_arcsec)
        return zonekernels.query_pairs(
            ra, dec, r, self.geometry, self.ra, self.dec, self.rows, self.ids, self.offsets
        )


def _ra_frame(hist: np.ndarray) -> tuple[float, float, float]:
    """Rotation ``ra0`` and the rotated-RA range ``[lo, hi]`` of the data.

    ``ra0`` sits in the middle of the largest empty run of the RA histogram,
    so data around RA 0/360 becomes one contiguous block.
    """
    nbin = hist.size
    width = 360.0 / nbin
    occupied = np.flatnonzero(hist)
    if occupied.size == 0:
        return 0.0, 0.0, 360.0
    gaps = np.diff(np.append(occupied, occupied[0] + nbin)) - 1  # empty run after each
    g = int(np.argmax(gaps))
    length = int(gaps[g])
    if length < _MIN_GAP_BINS:
        return 0.0, 0.0, 360.0
    ra0 = ((occupied[g] + 1 + 0.5 * length) * width) % 360.0
    half = 0.5 * length * width
    return ra0, half - width, 360.0 - half + width


def _geometry(
    n: int, hist: np.ndarray, dmin: float, dmax: float, zone_height: float | None
) -> np.ndarray:
    """Cell layout for ``n`` objects with the sampled RA histogram and dec range."""
    ra0, ra_lo, ra_hi = _ra_frame(hist)
    if not dmin <= dmax:  # nothing valid sampled
        dmin, dmax = -90.0, 90.0
    cells = max(1, n // OCCUPANCY)
    extent = max(dmax - dmin, 1e-9)
    if zone_height is None:
        # square cells on the sky at the middle dec of the box
        cosd = max(np.cos(np.deg2rad(0.5 * (dmin + dmax))), 1e-3)
        zone_height = float(np.sqrt(extent * (ra_hi - ra_lo) * cosd / cells))
    zone_height = min(max(zone_height, extent / (2 * cells + 64)), 180.0)
    zone0 = np.floor((dmin + 90.0) * (1.0 / zone_height))
    nz = int(np.floor((dmax + 90.0) * (1.0 / zone_height)) - zone0) + 1
    nc = max(1, cells // nz)
    col_w = (ra_hi - ra_lo) / nc
    return np.array([ra0, ra_lo, ra_hi, col_w, zone0, zone_height, nz, nc], np.float64)


def warm_up() -> None:
    """Load (or compile) the index kernels now, not on the first visit."""
    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(0, 1, 64), rng.uniform(0, 1, 64)
    index = ZoneIndex.build(ra, dec, np.arange(64, dtype=np.int64))
    index.nearest(ra[:8], dec[:8], 1.0)
    index.pairs(ra[:8], dec[:8], 1.0)
