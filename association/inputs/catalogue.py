"""Reading a night archive's starting catalogue: Objects and their earlier DIASources.

Other software writes these files (``catalogue/objects.parquet`` and
``catalogue/diasources.parquet``), so every column is checked like the
visit files (`association.inputs.readers`): a missing or mistyped column,
or a bad value, raises `BadInputError` naming the file, the column and the
row. Derived columns are derived here from ``ra`` and ``dec``, never trusted:

- a DIASource's ``fine`` must be the fine HEALPix NESTED index of its
  (ra, dec) when given;
- an Object's ``fine`` is that of the position that created it, which its
  running mean (ra, dec) drifts from by a fraction of an arcsec, so a given
  one must lie within `OBJECT_FINE_TOLERANCE_ARCSEC` of (ra, dec). The
  catalogue takes the index of (ra, dec) itself either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from association.columns import BANDS, DIASOURCE_DTYPE, OBJECT_DTYPE, band_index
from association.inputs.readers import _Col, _read_checked, _Reporter, derive_fine
from association.sky import healpix as hp
from association.sky.partition import Partition

OBJECT_FINE_TOLERANCE_ARCSEC = 5.0
"""How far from an Object's (ra, dec) its supplied fine pixel may lie."""

HISTORY_VISIT = -1
"""``visit`` of an earlier DIASource when the file gives none."""

_BAND_STATS = (
    ("psfFluxNdata", "i"),
    ("psfFluxMean", "f"),
    ("psfFluxM2", "f"),
    ("psfFluxWMean", "f"),
    ("psfFluxMeanErr", "f"),
    ("psfFluxChi2", "f"),
)
_BAND_FLOATS = tuple(name for name, kind in _BAND_STATS if kind == "f")

OBJECT_COLUMNS = (
    _Col("diaObjectId", "i"),
    _Col("ra", "f"),
    _Col("dec", "f"),
    _Col("nDiaSources", "i"),
    _Col("firstMjd", "f"),
    _Col("lastMjd", "f"),
    _Col("fine", "i", required=False),
    _Col("raErr", "f", required=False),
    _Col("decErr", "f", required=False),
    _Col("isVariable", "b", required=False),
    *(_Col(f"{b}_{name}", kind, required=False) for b in BANDS for name, kind in _BAND_STATS),
)
"""Columns of ``objects.parquet``: required ones first."""

DIASOURCE_COLUMNS = (
    _Col("diaSourceId", "i"),
    _Col("diaObjectId", "i"),
    _Col("ra", "f"),
    _Col("dec", "f"),
    _Col("midpointMjdTai", "f"),
    _Col("band", "s"),
    _Col("psfFlux", "f"),
    _Col("psfFluxErr", "f"),
    _Col("visit", "i", required=False),
    _Col("ssObjectId", "i", required=False),
    _Col("raErr", "f", required=False),
    _Col("decErr", "f", required=False),
    _Col("snr", "f", required=False),
    _Col("fine", "i", required=False),
)
"""Columns of ``diasources.parquet``: required ones first."""


def read_objects(path: str | Path, partition: Partition | None = None) -> np.ndarray:
    """Read and check a starting catalogue's Objects as OBJECT_DTYPE.

    Required: diaObjectId (integer > 0, unique), ra, dec (deg), nDiaSources
    (integer >= 0), firstMjd, lastMjd. Optional: fine (checked, then
    derived), raErr and decErr (deg, >= 0; NaN: unknown), isVariable
    (False), and per band ``{b}_psfFluxNdata`` (0), ``{b}_psfFluxMean``,
    ``{b}_psfFluxM2``, ``{b}_psfFluxWMean``, ``{b}_psfFluxMeanErr`` (>= 0)
    and ``{b}_psfFluxChi2`` (>= 0) (NaN: no data).
    """
    partition = partition or Partition()
    cols = _read_checked(path, OBJECT_COLUMNS, "catalogue objects")
    err = _Reporter(path, "catalogue objects")
    # Each column is checked, copied into place and let go: a catalogue of tens of
    # millions of Objects is not held twice.
    out = np.zeros(len(cols["ra"]), OBJECT_DTYPE)
    ids = out["diaObjectId"] = cols.pop("diaObjectId")
    err.positive("diaObjectId", ids)
    err.unique("diaObjectId", ids)
    del ids
    err.sky(cols["ra"], cols["dec"])
    n_sources = cols.pop("nDiaSources")
    _at_least_int(err, "nDiaSources", n_sources)
    out["nDiaSources"] = n_sources
    del n_sources
    for name in ("firstMjd", "lastMjd"):
        err.finite(name, cols[name])
    for name in ("raErr", "decErr"):
        err.at_least(name, cols[name], 0.0, allow_nan=True)
    for name in ("ra", "dec", "firstMjd", "lastMjd", "raErr", "decErr"):
        out[name] = cols.pop(name)
    out["isVariable"] = cols.pop("isVariable", False)
    for i, b in enumerate(BANDS):
        ndata = cols.pop(f"{b}_psfFluxNdata", None)
        if ndata is not None:
            _at_least_int(err, f"{b}_psfFluxNdata", ndata)
            out["psfFluxNdata"][:, i] = ndata
        for name in ("psfFluxMeanErr", "psfFluxChi2"):
            err.at_least(f"{b}_{name}", cols[f"{b}_{name}"], 0.0, allow_nan=True)
        for name in _BAND_FLOATS:
            out[name][:, i] = cols.pop(f"{b}_{name}")
    fine = partition.fine_index(out["ra"], out["dec"]) if len(out) else np.empty(0, np.int64)
    if "fine" in cols:
        _check_object_fine(err, partition, cols["fine"], out["ra"], out["dec"])
    out["fine"] = fine
    return out


def read_diasources(
    path: str | Path, object_ids: np.ndarray, partition: Partition | None = None
) -> np.ndarray:
    """Read and check a starting catalogue's earlier DIASources as DIASOURCE_DTYPE.

    Required: diaSourceId (integer > 0, unique), diaObjectId (one of
    ``object_ids``), ra, dec (deg), midpointMjdTai, band, psfFlux, psfFluxErr
    (nJy). Optional: visit (`HISTORY_VISIT`), ssObjectId (0), raErr, decErr
    (deg), snr (NaN), fine (must be the index of (ra, dec)).
    """
    partition = partition or Partition()
    cols = _read_checked(path, DIASOURCE_COLUMNS, "catalogue diasources")
    err = _Reporter(path, "catalogue diasources")
    err.positive("diaSourceId", cols["diaSourceId"])
    err.unique("diaSourceId", cols["diaSourceId"])
    known = np.sort(np.asarray(object_ids, dtype=np.int64))
    obj = cols["diaObjectId"]
    at = np.minimum(np.searchsorted(known, obj), max(known.size - 1, 0))
    bad = np.flatnonzero(known[at] != obj) if known.size else np.arange(obj.size)
    if bad.size:
        err.fail("diaObjectId", bad[0], f"value {obj[bad[0]]} is no Object of the catalogue")
    err.sky(cols["ra"], cols["dec"])
    err.finite("midpointMjdTai", cols["midpointMjdTai"])
    err.finite("psfFlux", cols["psfFlux"])
    err.at_least("psfFluxErr", cols["psfFluxErr"], 0.0, allow_nan=False)
    for name in ("raErr", "decErr"):
        err.at_least(name, cols[name], 0.0, allow_nan=True)
    band = band_index(cols["band"])
    bad = np.flatnonzero(band < 0)
    if bad.size:
        err.fail(
            "band", bad[0], f"unknown band {str(cols['band'][bad[0]])!r}, expected one of {BANDS}"
        )
    n = len(obj)
    out = np.zeros(n, DIASOURCE_DTYPE)
    for name in ("diaSourceId", "diaObjectId", "ra", "dec", "midpointMjdTai", "psfFlux"):
        out[name] = cols[name]
    for name in ("psfFluxErr", "raErr", "decErr", "snr"):
        out[name] = cols[name]
    out["band"] = band
    out["visit"] = cols.get("visit", HISTORY_VISIT)
    out["ssObjectId"] = cols.get("ssObjectId", 0)
    if n:
        out["fine"] = derive_fine(
            err, partition.fine_index, out["ra"], out["dec"], cols.get("fine")
        )
    return out


def _at_least_int(err: _Reporter, name: str, values: np.ndarray) -> None:
    bad = np.flatnonzero(values < 0)
    if bad.size:
        err.fail(name, bad[0], f"value {values[bad[0]]} is negative")


def _check_object_fine(
    err: _Reporter, partition: Partition, fine: np.ndarray, ra: np.ndarray, dec: np.ndarray
) -> None:
    """A supplied Object fine index must be a pixel within the tolerance of (ra, dec)."""
    order = partition.fine_order
    nside = 1 << order
    bad = np.flatnonzero((fine < 0) | (fine >= 12 * nside * nside))
    if bad.size:
        i = bad[0]
        err.fail("fine", i, f"value {fine[i]} is not a HEALPix index of order {order}")
    if not len(fine):
        return
    pra, pdec = hp.pix2ang(nside, fine, nest=True, lonlat=True)
    a, d, a0, d0 = (np.radians(x) for x in (ra, dec, pra, pdec))
    h = np.sin((d - d0) / 2) ** 2 + np.cos(d) * np.cos(d0) * np.sin((a - a0) / 2) ** 2
    dist = np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))) * 3600.0
    reach = OBJECT_FINE_TOLERANCE_ARCSEC + np.degrees(hp.max_pixrad(nside)) * 3600.0
    bad = np.flatnonzero(dist > reach)
    if bad.size:
        i = bad[0]
        err.fail(
            "fine",
            i,
            f"value {fine[i]} is the order-{order} NESTED pixel at ({pra[i]:.6f}, {pdec[i]:.6f}), "
            f"{dist[i]:.1f} arcsec from the Object's (ra, dec) = "
            f"({float(ra[i])!r}, {float(dec[i])!r}); "
            f"the column is optional: leave it out and it is derived ({bad.size} rows differ)",
        )
