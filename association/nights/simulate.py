"""Simulate a night of DIASources, moving-object predictions and events, with the truth.

The sky is cut into HEALPix patches (order `PATCH_ORDER`); only patches the
night's fields of view touch get a starting catalogue, and each patch draws
its Objects from its own random stream, so a patch holds the same Objects
whatever other visits are simulated. Per visit, the detections of catalogue
Objects, transients, moving objects and spurious sources get astrometric and
photometric noise from the visit's seeing and band, and are written with the
visit's predictions and three events to a night archive (`events.archive`).

Positions are true on the sphere: noise and motion are offsets along great
circles. ``raErr``/``decErr`` are on-sky 1-sigma errors in degrees (``raErr``
along the RA direction, i.e. of ``ra * cos(dec)``). A visit's DIASources are
measured at its midpoint, ``observationStartMJD + visitTime / 2``.

Catalogue conventions: an Object's id is the diaSourceId of the earlier
DIASource that created it, and its ``fine`` index is that DIASource's; its
position is the mean of its DIASources'; bands without data have Welford
mean and M2 of 0. Earlier DIASources have ``visit`` -1 (not in the cadence).

A survey: ``simulate(..., after=EARLIER_ARCHIVE)`` continues the sky an
earlier night left (`association.nights.survey`). The patches keep their
Objects (same ids and positions; the starting catalogue's history lies before
the survey's first night), and the archive's starting catalogue holds only
the patches no earlier night has touched. Movers go on along their orbits
and new ones fly over the new patches; transients last `transient_days`,
fading, and new ones appear. Night k > 0 of the survey draws the detections
of a patch's Objects from the stream (seed, 0, patch, k), its new movers
from (seed, 1, k) and its new transients from (seed, 2, k); their ids are
``k * 2**32`` plus a count, so ids never clash across nights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from association.columns import BANDS, DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE
from association.nights.opsim import CadenceError, Region, nights, read_cadence
from association.nights.survey import SurveyError, SurveyState, read_state, survey_id, write_state
from association.sky import healpix as hp
from association.sky.fov import DEFAULT_FOV_RADIUS_DEG
from association.sky.partition import DEFAULT_FINE_ORDER
from events.archive import ArchiveWriter
from events.envelope import Event
from events.types import DIASOURCES_READY, NEXT_VISIT, PREDICTIONS_READY

KINDS = ("variable", "static", "transient", "mover", "spurious")
"""Truth kinds of a DIASource; a kind is stored as its name."""

PATCH_ORDER = 6
"""HEALPix order of the patches the catalogue is generated in (0.84 deg^2)."""
SOURCE_ID_BASE = 2**40
HISTORY_VISIT = -1
"""Visit id of the starting catalogue's earlier DIASources: never a real visit (OpSim's start at 0)."""
"""The night's diaSourceIds are SOURCE_ID_BASE + observationId * 2**20 + row."""
MJD_UNIX_EPOCH = 40587.0
PAIR_ID_OFFSET = 10_000_000
"""A back-to-back second exposure's visit id is its first's plus this (OpSim's are smaller)."""
NIGHT_ID_SHIFT = 32
"""Movers and transients first seen on night k of a survey have ids ``k << NIGHT_ID_SHIFT`` + n."""

_SUB_ORDER = 29  # positions are centres of order-29 pixels (0.4 mas): continuous enough
_PATCH_NSIDE = 2**PATCH_ORDER
_PATCH_ID_SHIFT = 24  # catalogue ids: patch * 2**24 + row + 1, always < 2**40
_VISIT_ROW_BITS = 20
_AB_NJY = 31.4  # AB magnitude of 1 nJy
_M5 = np.array([23.9, 25.0, 24.7, 24.0, 23.3, 22.1])  # single-visit 5-sigma depth at 0.8"
_REF_SEEING = 0.8
_FWHM_SIGMA = 2.355

_VAR, _STATIC, _TRANSIENT, _MOVER, _SPURIOUS = range(5)


@dataclass
class SimConfig:
    """What to simulate. Densities are per square degree; fractions and probabilities in [0, 1].

    Parameters
    ----------
    seed : int
        Seed of every random stream; the same seed gives the same archive.
    density_static_per_deg2 : float
        Preloaded Objects per deg^2 (static and variable).
    variable_fraction : float
        Fraction of preloaded Objects that are variable.
    variable_history : (int, int)
        Range of earlier DIASources of a variable Object (static ones have 1).
    history_days : float
        Earlier DIASources lie 1 to `history_days` days before the night (the
        survey's first night, when continuing a survey).
    transients_per_deg2 : float
        Transients per deg^2, each appearing at a random time in the night.
    transient_days : (float, float)
        Range of how long a transient stays on: its signal-to-noise falls
        linearly from its start to ``snr_range[0]`` over that time, then it
        is gone (nights later in a survey see the ones still on).
    movers_per_deg2 : float
        Moving objects per deg^2 at the middle of the night.
    fast_mover_fraction : float
        Fraction of movers with rates in `fast_rate_deg_per_day`.
    slow_rate_deg_per_day, fast_rate_deg_per_day : (float, float)
        Ranges of the movers' angular rates.
    spurious_per_visit_deg2 : float
        Spurious detections per deg^2 per visit.
    p_detect_variable, p_detect_static, p_detect_transient, p_detect_mover : float
        Probability that a source in the field of view is detected in a visit.
    snr_range : (float, float)
        Range of signal-to-noise ratios (a power law, most near the low end).
    snr_slope : float
        Index of that power law, N(>snr) ~ snr**-slope.
    spurious_snr_max : float
        Spurious detections have snr in [snr_range[0], spurious_snr_max].
    astrometric_floor_arcsec : float
        Least 1-sigma astrometric error per axis; otherwise seeing / 2.355 / snr.
    history_seeing_arcsec : float
        Seeing of the earlier (catalogue) DIASources.
    ellipse_semi_major_arcsec : (float, float)
        Range of the 1-sigma semi-major axis of a prediction's error ellipse.
    ellipse_axis_ratio : (float, float)
        Range of semi-minor / semi-major.
    right_prediction_max_sigma : float
        A right prediction's error, in ellipse sigmas, is Gaussian cut at this.
    wrong_prediction_fraction : float
        Fraction of predictions that are wrong: off by `wrong_offset_sigma`.
    wrong_offset_sigma : (float, float)
        Range of a wrong prediction's offset, in semi-major axes.
    missing_prediction_fraction : float
        Fraction of a predictable mover's predictions left out, per visit.
    unpredicted_mover_fraction : float
        Fraction of movers that NightMOPS does not know: never predicted.
    fov_radius : float
        Field of view radius, degrees.
    next_visit_lead_s : (float, float)
        ``telescope.next_visit`` is sent this long before the exposure starts.
    detection_delay_s : (float, float)
        ``detection.diasources_ready`` is sent this long after the visit ends.
    predictions_jitter_s : float
        ``nightmops.predictions_ready`` is sent within this of the detection event.
    pair_gap_s : float
        If > 0, every visit of the cadence gets a second exposure of the same
        field, band and seeing this many seconds after its start (another
        survey's back-to-back pairs, e.g. 80 s), with visit id
        ``observationId + PAIR_ID_OFFSET``. OpSim's own pairs of a field about
        33 minutes apart are in the cadence already. 0: none.
    """

    seed: int = 1
    density_static_per_deg2: float = 2000.0
    variable_fraction: float = 0.1
    variable_history: tuple[int, int] = (3, 10)
    history_days: float = 365.0
    transients_per_deg2: float = 1.0
    transient_days: tuple[float, float] = (2.0, 30.0)
    movers_per_deg2: float = 10.0
    fast_mover_fraction: float = 0.05
    slow_rate_deg_per_day: tuple[float, float] = (0.1, 1.0)
    fast_rate_deg_per_day: tuple[float, float] = (2.0, 10.0)
    spurious_per_visit_deg2: float = 5.0
    p_detect_variable: float = 0.7
    p_detect_static: float = 0.005
    p_detect_transient: float = 0.9
    p_detect_mover: float = 0.9
    snr_range: tuple[float, float] = (5.0, 1000.0)
    snr_slope: float = 1.5
    spurious_snr_max: float = 6.5
    astrometric_floor_arcsec: float = 0.02
    history_seeing_arcsec: float = 0.8
    ellipse_semi_major_arcsec: tuple[float, float] = (0.2, 2.0)
    ellipse_axis_ratio: tuple[float, float] = (0.2, 1.0)
    right_prediction_max_sigma: float = 2.0
    wrong_prediction_fraction: float = 0.02
    wrong_offset_sigma: tuple[float, float] = (20.0, 100.0)
    missing_prediction_fraction: float = 0.02
    unpredicted_mover_fraction: float = 0.1
    fov_radius: float = DEFAULT_FOV_RADIUS_DEG
    next_visit_lead_s: tuple[float, float] = (5.0, 30.0)
    detection_delay_s: tuple[float, float] = (30.0, 60.0)
    predictions_jitter_s: float = 20.0
    pair_gap_s: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                v = tuple(v)
                setattr(self, f.name, v)
            if isinstance(v, tuple) and not (len(v) == 2 and 0 <= v[0] <= v[1]):
                raise ValueError(f"SimConfig.{f.name} must be a range (lo, hi), 0 <= lo <= hi")
            if f.name.startswith("p_") or f.name.endswith("_fraction"):
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"SimConfig.{f.name} must be in [0, 1], got {v}")
            elif f.name != "seed" and isinstance(v, int | float) and v < 0:
                raise ValueError(f"SimConfig.{f.name} must be >= 0, got {v}")
        if self.variable_history[0] < 1:
            raise ValueError("SimConfig.variable_history must start at >= 1")
        if self.snr_range[0] <= 0 or self.fov_radius <= 0:
            raise ValueError("SimConfig.snr_range and fov_radius must be > 0")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-able dict."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


# -- the sphere -------------------------------------------------------------------------------


def _vec(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Unit vectors (n, 3) of positions in degrees."""
    ra, dec = np.radians(ra), np.radians(dec)
    c = np.cos(dec)
    return np.stack([c * np.cos(ra), c * np.sin(ra), np.sin(dec)], axis=-1)


def _radec(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in degrees of vectors (n, 3), not necessarily unit."""
    ra = np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 360.0
    ra = np.where(ra >= 360.0, 0.0, ra)
    dec = np.degrees(np.arctan2(v[:, 2], np.hypot(v[:, 0], v[:, 1])))
    return ra, dec


def _offset(
    ra: np.ndarray, dec: np.ndarray, pa: np.ndarray, dist: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Move along great circles by `dist` degrees at position angle `pa` (deg east of north)."""
    d0, r0 = np.radians(dec), np.radians(ra)
    p, s = np.radians(pa), np.radians(dist)
    sin_d = np.clip(np.sin(d0) * np.cos(s) + np.cos(d0) * np.sin(s) * np.cos(p), -1.0, 1.0)
    d1 = np.arcsin(sin_d)
    r1 = r0 + np.arctan2(np.sin(p) * np.sin(s) * np.cos(d0), np.cos(s) - np.sin(d0) * sin_d)
    ra1 = np.degrees(r1) % 360.0
    return np.where(ra1 >= 360.0, 0.0, ra1), np.degrees(d1)


def _offset_en(
    ra: np.ndarray, dec: np.ndarray, east: np.ndarray, north: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Offset by small (east, north) tangent-plane steps in arcsec."""
    return _offset(ra, dec, np.degrees(np.arctan2(east, north)), np.hypot(east, north) / 3600.0)


def _fine(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Fine HEALPix NESTED index (order `DEFAULT_FINE_ORDER`)."""
    return hp.ang2pix(2**DEFAULT_FINE_ORDER, ra, dec, nest=True, lonlat=True).astype("i8")


def _uniform_in_patches(
    rng: np.random.Generator, patches: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One uniform random position inside each given patch."""
    span = 4 ** (_SUB_ORDER - PATCH_ORDER)
    sub = patches.astype("i8") * span + rng.integers(0, span, patches.size)
    return hp.pix2ang(2**_SUB_ORDER, sub, nest=True, lonlat=True)


def unix_time(mjd: float | np.ndarray) -> float | np.ndarray:
    """Unix seconds of an MJD (the MJD's time scale taken as UTC)."""
    return (mjd - MJD_UNIX_EPOCH) * 86400.0


# -- photometry and astrometry ----------------------------------------------------------------


def _draw_snr(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float) -> np.ndarray:
    """Power-law signal-to-noise ratios in [lo, hi], N(>snr) ~ snr**-slope."""
    u = rng.random(n)
    return lo * (1.0 - u * (1.0 - (lo / hi) ** slope)) ** (-1.0 / slope)


def _flux_err(band: np.ndarray, seeing: np.ndarray | float) -> np.ndarray:
    """PSF flux 1-sigma error in nJy: a fifth of the 5-sigma flux, scaled by seeing."""
    return 10.0 ** ((_AB_NJY - _M5[band]) / 2.5) / 5.0 * (np.asarray(seeing) / _REF_SEEING)


def _astro_sigma(seeing: np.ndarray | float, snr: np.ndarray, floor: float) -> np.ndarray:
    """Per-axis 1-sigma astrometric error, arcsec."""
    return np.maximum(np.asarray(seeing) / _FWHM_SIGMA / snr, floor)


# -- the plan: which patches, which visits ----------------------------------------------------


def _patch_area(patches: np.ndarray) -> float:
    """Square degrees of the given patches."""
    return patches.size * hp.nside2pixarea(_PATCH_NSIDE, degrees=True)


@dataclass
class _Night:
    """The night's visits and the patches their fields of view touch."""

    visits: np.ndarray  # CADENCE_DTYPE
    vec: np.ndarray  # (n, 3) field centres
    band: np.ndarray  # index into BANDS
    mid: np.ndarray  # exposure midpoint, MJD
    patches: np.ndarray  # sorted patches touched by any field of view
    patch_visits: list[np.ndarray]  # per patch, the visit indices touching it, in order

    @property
    def area(self) -> float:
        return _patch_area(self.patches)


def _plan(visits: np.ndarray, radius: float) -> _Night:
    """Find the patches each field of view touches."""
    vec = _vec(visits["fieldRA"], visits["fieldDec"])
    pairs = [
        hp.query_disc(_PATCH_NSIDE, v, np.radians(radius), inclusive=True, nest=True) for v in vec
    ]
    patch = np.concatenate(pairs).astype("i8")
    vis = np.repeat(np.arange(len(visits)), [p.size for p in pairs])
    order = np.lexsort((vis, patch))
    patch, vis = patch[order], vis[order]
    patches, starts = np.unique(patch, return_index=True)
    band = np.array([BANDS.index(f) for f in visits["filter"]], dtype="i8")
    mid = visits["observationStartMJD"] + visits["visitTime"] / 2 / 86400.0
    return _Night(visits, vec, band, mid, patches, np.split(vis, starts[1:]))


# -- the starting catalogue -------------------------------------------------------------------

_CAND_DTYPE = np.dtype(
    [("vis", "i8"), ("ra", "f8"), ("dec", "f8"), ("obj", "i8"), ("kind", "i1"), ("snr", "f8")]
)


def _patch_catalogue(
    patch: int, night: _Night, survey_mjd: float, cfg: SimConfig, night_index: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Objects of one patch, their earlier DIASources, and their detections tonight.

    The Objects and their history depend on the patch and the survey's first
    night (`survey_mjd`) only; the detections on the night too.
    """
    rng = np.random.default_rng([cfg.seed, 0, patch])
    area = hp.nside2pixarea(_PATCH_NSIDE, degrees=True)
    n = int(rng.poisson(cfg.density_static_per_deg2 * area))
    ra, dec = _uniform_in_patches(rng, np.full(n, patch))
    is_var = rng.random(n) < cfg.variable_fraction
    lo, hi = cfg.variable_history
    nhist = np.where(is_var, rng.integers(lo, hi + 1, n), 1)
    snr_obj = _draw_snr(rng, n, *cfg.snr_range, cfg.snr_slope)

    owner = np.repeat(np.arange(n), nhist)
    m = owner.size
    if m >= 2**_PATCH_ID_SHIFT:
        raise ValueError(f"patch {patch}: {m} catalogue DIASources, too many for the id scheme")
    first = np.cumsum(nhist) - nhist
    t = survey_mjd - rng.uniform(1.0, cfg.history_days, m)
    t = t[np.lexsort((t, owner))]  # time order within each Object
    band = rng.integers(0, NBANDS, m)
    snr = np.maximum(snr_obj[owner] * rng.uniform(0.6, 1.4, m), cfg.snr_range[0])
    sign = np.where(is_var[owner], rng.integers(0, 2, m) * 2 - 1, 1)
    err = _flux_err(band, cfg.history_seeing_arcsec)
    sigma = _astro_sigma(cfg.history_seeing_arcsec, snr, cfg.astrometric_floor_arcsec)
    hra, hdec = _offset_en(ra[owner], dec[owner], *rng.normal(0.0, sigma, (2, m)))

    hist = np.zeros(m, DIASOURCE_DTYPE)
    hist["visit"] = HISTORY_VISIT
    hist["diaSourceId"] = patch * 2**_PATCH_ID_SHIFT + 1 + np.arange(m)
    obj_id = hist["diaSourceId"][first]
    hist["diaObjectId"] = obj_id[owner]
    hist["ra"], hist["dec"] = hra, hdec
    hist["raErr"] = hist["decErr"] = sigma / 3600.0
    hist["midpointMjdTai"] = t
    hist["band"] = band
    hist["psfFluxErr"] = err
    hist["psfFlux"] = sign * snr * err
    hist["snr"] = snr
    hist["fine"] = _fine(hra, hdec)

    obj = np.zeros(n, OBJECT_DTYPE)
    obj["diaObjectId"] = obj_id
    if n:
        obj["ra"], obj["dec"] = _radec(np.add.reduceat(_vec(hra, hdec), first, axis=0))
    obj["fine"] = hist["fine"][first]
    obj["nDiaSources"] = nhist
    obj["firstMjd"] = t[first]
    obj["lastMjd"] = t[first + nhist - 1]
    flux = hist["psfFlux"].astype("f8")
    key = owner * NBANDS + band
    cnt = np.bincount(key, minlength=n * NBANDS)
    mean = np.bincount(key, flux, minlength=n * NBANDS) / np.maximum(cnt, 1)
    m2 = np.bincount(key, (flux - mean[key]) ** 2, minlength=n * NBANDS)
    obj["psfFluxNdata"] = cnt.reshape(n, NBANDS)
    obj["psfFluxMean"] = mean.reshape(n, NBANDS)
    obj["psfFluxM2"] = m2.reshape(n, NBANDS)
    # the error of the mean position, and the inverse-variance weighted flux statistics
    mean_err = np.sqrt(np.bincount(owner, sigma**2, minlength=n)) / np.maximum(nhist, 1) / 3600.0
    obj["raErr"] = obj["decErr"] = mean_err
    w = 1.0 / err.astype("f8") ** 2
    wsum = np.bincount(key, w, minlength=n * NBANDS)
    with np.errstate(divide="ignore", invalid="ignore"):
        wmean = np.bincount(key, w * flux, minlength=n * NBANDS) / wsum
        chi2 = np.bincount(key, w * (flux - wmean[key]) ** 2, minlength=n * NBANDS)
        merr = 1.0 / np.sqrt(wsum)
    none = (wsum == 0).reshape(n, NBANDS)
    obj["psfFluxWMean"] = np.where(none, np.nan, wmean.reshape(n, NBANDS))
    obj["psfFluxMeanErr"] = np.where(none, np.nan, merr.reshape(n, NBANDS))
    obj["psfFluxChi2"] = np.where(none, np.nan, chi2.reshape(n, NBANDS))
    obj["isVariable"] = is_var

    # Tonight: which Objects fall in which visit and are detected there.
    if night_index:
        rng = np.random.default_rng([cfg.seed, 0, patch, night_index])
    vis = night.patch_visits[int(np.searchsorted(night.patches, patch))]
    cand = np.arange(n) if cfg.p_detect_static > 0 else np.flatnonzero(is_var)
    p = np.where(is_var[cand], cfg.p_detect_variable, cfg.p_detect_static)[:, None]
    inside = _vec(ra[cand], dec[cand]) @ night.vec[vis].T >= np.cos(np.radians(cfg.fov_radius))
    ci, vi = np.nonzero(inside & (rng.random(inside.shape) < p))
    oi = cand[ci]
    det = np.zeros(oi.size, _CAND_DTYPE)
    det["vis"], det["ra"], det["dec"], det["obj"] = vis[vi], ra[oi], dec[oi], obj_id[oi]
    det["kind"] = np.where(is_var[oi], _VAR, _STATIC)
    det["snr"] = snr_obj[oi]
    return obj, hist, det


def _string_columns(table: pa.Table) -> list[str]:
    """Columns worth dictionary encoding: on random floats it only costs time."""
    return [f.name for f in table.schema if pa.types.is_string(f.type)]


class _ParquetSink:
    """Write row batches of a structured array to one Parquet file, in order."""

    def __init__(self, path: Path, to_table: Callable[[np.ndarray], pa.Table], dtype: np.dtype):
        self.path, self.to_table, self.dtype = path, to_table, dtype
        self.parts: list[np.ndarray] = []
        self.rows = self.total = 0
        self.writer: pq.ParquetWriter | None = None

    def add(self, rows: np.ndarray, flush_at: int = 1_000_000) -> None:
        self.parts.append(rows)
        self.rows += rows.size
        self.total += rows.size
        if self.rows >= flush_at:
            self.flush()

    def flush(self) -> None:
        table = self.to_table(np.concatenate(self.parts) if self.parts else np.empty(0, self.dtype))
        if self.writer is None:
            self.writer = pq.ParquetWriter(
                self.path, table.schema, use_dictionary=_string_columns(table)
            )
        self.writer.write_table(table)
        self.parts, self.rows = [], 0

    def close(self) -> None:
        if self.rows or self.writer is None:
            self.flush()
        assert self.writer is not None
        self.writer.close()


def _band_array(band: np.ndarray) -> pa.Array:
    idx = pa.array(np.asarray(band, dtype="i1"))
    return pa.DictionaryArray.from_arrays(idx, pa.array(list(BANDS))).cast(pa.string())


def objects_table(obj: np.ndarray) -> pa.Table:
    """Objects as a flat table: the array columns become ``{band}_{column}``."""
    cols: dict[str, Any] = {}
    for name in OBJECT_DTYPE.names:
        if OBJECT_DTYPE[name].shape:
            continue
        cols[name] = obj[name]
    per_band = [name for name in OBJECT_DTYPE.names if OBJECT_DTYPE[name].shape]
    for i, b in enumerate(BANDS):
        for name in per_band:
            cols[f"{b}_{name}"] = np.ascontiguousarray(obj[name][:, i])
    cols["isVariable"] = cols.pop("isVariable")
    return pa.table(cols)


def diasources_table(src: np.ndarray) -> pa.Table:
    """DIASources (`DIASOURCE_DTYPE`) as a table, band as its name."""
    cols: dict[str, Any] = {n: src[n] for n in DIASOURCE_DTYPE.names}
    cols["band"] = _band_array(src["band"])
    return pa.table(cols)


# -- the night's sources ----------------------------------------------------------------------


@dataclass
class _Movers:
    truth: dict[str, np.ndarray]  # each mover's orbit is along a great circle from mjd0

    def positions(self, mjd: float) -> tuple[np.ndarray, np.ndarray]:
        t = self.truth
        return _offset(t["ra"], t["dec"], t["direction"], t["rate"] * (mjd - t["mjd0"]))


def _night_mjd0(night: _Night) -> float:
    v = night.visits
    return float((v["observationStartMJD"][0] + v["observationStartMJD"][-1]) / 2)


def _make_movers(
    night: _Night, cfg: SimConfig, patches: np.ndarray | None = None, index: int = 0
) -> _Movers:
    """Movers over `patches` (all the night's by default) at the middle of the night."""
    patches = night.patches if patches is None else patches
    rng = np.random.default_rng([cfg.seed, 1, index] if index else [cfg.seed, 1])
    n = int(rng.poisson(cfg.movers_per_deg2 * _patch_area(patches))) if patches.size else 0
    ra, dec = _uniform_in_patches(rng, patches[rng.integers(0, max(patches.size, 1), n)])
    fast = rng.random(n) < cfg.fast_mover_fraction
    fast_rate = rng.uniform(*cfg.fast_rate_deg_per_day, n)
    rate = np.where(fast, fast_rate, rng.uniform(*cfg.slow_rate_deg_per_day, n))
    a = rng.uniform(*cfg.ellipse_semi_major_arcsec, n)
    snr = _draw_snr(rng, n, *cfg.snr_range, cfg.snr_slope)
    r_flux = snr * _flux_err(np.full(n, BANDS.index("r")), _REF_SEEING)
    truth = {
        "ssObjectId": (index << NIGHT_ID_SHIFT) + np.arange(1, n + 1, dtype="i8"),
        "ra": ra,
        "dec": dec,
        "rate": rate,  # deg/day along a great circle
        "direction": rng.uniform(0.0, 360.0, n),  # deg east of north at mjd0
        "fast": fast,
        "predictable": rng.random(n) >= cfg.unpredicted_mover_fraction,
        "semiMajorAxis": a,
        "semiMinorAxis": a * rng.uniform(*cfg.ellipse_axis_ratio, n),
        "positionAngle": rng.uniform(0.0, 180.0, n),
        "mag": _AB_NJY - 2.5 * np.log10(r_flux),
        "mjd0": np.full(n, _night_mjd0(night)),
        "snr": snr,
    }
    return _Movers(truth)


def _make_transients(night: _Night, cfg: SimConfig, index: int = 0) -> dict[str, np.ndarray]:
    """Transients appearing during the night over its patches."""
    rng = np.random.default_rng([cfg.seed, 2, index] if index else [cfg.seed, 2])
    n = int(rng.poisson(cfg.transients_per_deg2 * night.area))
    ra, dec = _uniform_in_patches(rng, night.patches[rng.integers(0, night.patches.size, n)])
    v = night.visits
    t_end = v["observationStartMJD"][-1] + v["visitTime"][-1] / 86400.0
    start = rng.uniform(v["observationStartMJD"][0], t_end, n)
    snr = _draw_snr(rng, n, *cfg.snr_range, cfg.snr_slope)
    return {
        "transientId": (index << NIGHT_ID_SHIFT) + np.arange(1, n + 1, dtype="i8"),
        "ra": ra,
        "dec": dec,
        "mjdStart": start,
        "mjdEnd": start + rng.uniform(*cfg.transient_days, n),
        "snr": snr,
    }


def _night_movers(night: _Night, cfg: SimConfig, before: SurveyState | None) -> _Movers:
    """The earlier nights' movers, and new ones over the patches new to the survey."""
    if before is None:
        return _make_movers(night, cfg)
    new = _make_movers(night, cfg, np.setdiff1d(night.patches, before.patches), before.index + 1)
    return _Movers({k: np.concatenate([before.movers[k], v]) for k, v in new.truth.items()})


def _night_transients(
    night: _Night, cfg: SimConfig, before: SurveyState | None
) -> dict[str, np.ndarray]:
    """The earlier nights' transients still on, and the night's own."""
    new = _make_transients(night, cfg, 0 if before is None else before.index + 1)
    if before is None:
        return new
    old = before.transients
    on = old["mjdEnd"] > night.visits["observationStartMJD"][0]
    return {k: np.concatenate([old[k][on], v]) for k, v in new.items()}


def _fading_snr(tr: dict[str, np.ndarray], mjd: float, floor: float) -> np.ndarray:
    """Each transient's signal-to-noise at `mjd`: from its start's down to `floor` at its end."""
    f = np.clip((mjd - tr["mjdStart"]) / (tr["mjdEnd"] - tr["mjdStart"]), 0.0, 1.0)
    return tr["snr"] + (floor - tr["snr"]) * f


_SRC_DTYPE = np.dtype(
    [
        ("ra", "f8"),
        ("dec", "f8"),
        ("kind", "i1"),
        ("diaObjectId", "i8"),
        ("ssObjectId", "i8"),
        ("transientId", "i8"),
        ("predicted", "?"),
        ("snr", "f8"),
    ]
)


def _rows(**cols: np.ndarray) -> np.ndarray:
    n = len(next(iter(cols.values())))
    out = np.zeros(n, _SRC_DTYPE)
    for k, v in cols.items():
        out[k] = v
    return out


def _ellipse_offsets(
    rng: np.random.Generator, a: np.ndarray, b: np.ndarray, pa: np.ndarray, chi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) arcsec at `chi` sigmas, random direction, of ellipses (a, b, pa)."""
    phi = rng.uniform(0.0, 2 * np.pi, a.size)
    u, w = chi * np.cos(phi) * a, chi * np.sin(phi) * b
    p = np.radians(pa)
    return u * np.sin(p) + w * np.cos(p), u * np.cos(p) - w * np.sin(p)


def _transient_rows(
    rng: np.random.Generator,
    tr: dict[str, np.ndarray],
    mid: float,
    centre: np.ndarray,
    cos_r: float,
    p: float,
    floor: float,
) -> np.ndarray:
    """Transients on at `mid`, inside the field of view, and detected."""
    on = (tr["mjdStart"] <= mid) & (mid < tr["mjdEnd"])
    seen = on & (_vec(tr["ra"], tr["dec"]) @ centre >= cos_r)
    seen &= rng.random(seen.size) < p
    return _rows(
        ra=tr["ra"][seen],
        dec=tr["dec"][seen],
        kind=np.full(seen.sum(), _TRANSIENT),
        transientId=tr["transientId"][seen],
        snr=_fading_snr(tr, mid, floor)[seen],
    )


def _mover_rows(
    rng: np.random.Generator,
    movers: _Movers,
    mid: float,
    centre: np.ndarray,
    cos_r: float,
    cfg: SimConfig,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Detected movers inside the field of view, and NightMOPS' predictions for it."""
    mt = movers.truth
    mra, mdec = movers.positions(mid)
    inside = _vec(mra, mdec) @ centre >= cos_r
    detected = inside & (rng.random(inside.size) < cfg.p_detect_mover)
    kept = rng.random(inside.size) >= cfg.missing_prediction_fraction
    listed = inside & mt["predictable"] & kept
    wrong = listed & (rng.random(inside.size) < cfg.wrong_prediction_fraction)
    k = np.flatnonzero(listed)
    # A right prediction is off by a Gaussian draw from its ellipse, cut at chi_max sigmas.
    chi_max = cfg.right_prediction_max_sigma
    chi = np.sqrt(-2.0 * np.log1p(-rng.random(k.size) * -np.expm1(-(chi_max**2) / 2)))
    chi = np.where(wrong[k], rng.uniform(*cfg.wrong_offset_sigma, k.size), chi)
    a, b, pa = mt["semiMajorAxis"][k], mt["semiMinorAxis"][k], mt["positionAngle"][k]
    pra, pdec = _offset_en(mra[k], mdec[k], *_ellipse_offsets(rng, a, b, pa, chi))
    pred = {
        "ssObjectId": mt["ssObjectId"][k],
        "ra": pra,
        "dec": pdec,
        "semiMajorAxis": a,
        "semiMinorAxis": b,
        "positionAngle": pa,
        "predictedMag": mt["mag"][k] + rng.normal(0.0, 0.3, k.size),
        "mjd": np.full(k.size, mid),
        "wrong": wrong[k],
    }
    d = np.flatnonzero(detected)
    rows = _rows(
        ra=mra[d],
        dec=mdec[d],
        kind=np.full(d.size, _MOVER),
        ssObjectId=mt["ssObjectId"][d],
        predicted=listed[d] & ~wrong[d],
        snr=mt["snr"][d],
    )
    return rows, pred


def _spurious_rows(
    rng: np.random.Generator, visit: np.void, cos_r: float, cfg: SimConfig
) -> np.ndarray:
    """Spurious detections, uniform over the field of view."""
    area = 2 * np.pi * (1 - cos_r) * np.degrees(1.0) ** 2
    n = int(rng.poisson(cfg.spurious_per_visit_deg2 * area))
    theta = np.degrees(np.arccos(1.0 - rng.random(n) * (1.0 - cos_r)))
    centre_ra, centre_dec = np.full(n, visit["fieldRA"]), np.full(n, visit["fieldDec"])
    ra, dec = _offset(centre_ra, centre_dec, rng.uniform(0.0, 360.0, n), theta)
    snr = rng.uniform(cfg.snr_range[0], max(cfg.spurious_snr_max, cfg.snr_range[0]), n)
    return _rows(ra=ra, dec=dec, kind=np.full(n, _SPURIOUS), snr=snr)


def _visit(
    i: int,
    night: _Night,
    cat_det: np.ndarray,
    movers: _Movers,
    transients: dict[str, np.ndarray],
    cfg: SimConfig,
) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray], np.random.Generator]:
    """True sources, measured DIASources and predictions of visit `i`, and its random stream."""
    visit = night.visits[i]
    rng = np.random.default_rng([cfg.seed, 3, int(visit["observationId"])])
    mid, centre = night.mid[i], night.vec[i]
    cos_r = np.cos(np.radians(cfg.fov_radius))
    catalogue = _rows(
        ra=cat_det["ra"],
        dec=cat_det["dec"],
        kind=cat_det["kind"],
        diaObjectId=cat_det["obj"],
        snr=cat_det["snr"],
    )
    tr = _transient_rows(
        rng, transients, mid, centre, cos_r, cfg.p_detect_transient, cfg.snr_range[0]
    )
    mv, pred = _mover_rows(rng, movers, mid, centre, cos_r, cfg)
    src = np.concatenate([catalogue, tr, mv, _spurious_rows(rng, visit, cos_r, cfg)])
    src = src[rng.permutation(src.size)]
    return src, _measure(rng, src, visit, night.band[i], mid, cfg), pred, rng


def _measure(
    rng: np.random.Generator,
    src: np.ndarray,
    visit: np.void,
    band: int,
    mid: float,
    cfg: SimConfig,
) -> dict[str, Any]:
    """The DIASources a visit measures of true sources: noisy positions and fluxes."""
    n = src.size
    if n >= 2**_VISIT_ROW_BITS:
        raise ValueError(f"visit {visit['observationId']}: {n} DIASources, more than 2**20")
    seeing = float(visit["seeingFwhmEff"])
    kind = src["kind"]
    snr = np.where(kind == _SPURIOUS, src["snr"], src["snr"] * rng.uniform(0.7, 1.3, n))
    snr = np.maximum(snr, cfg.snr_range[0])
    sign = np.where((kind == _VAR) | (kind == _SPURIOUS), rng.integers(0, 2, n) * 2 - 1, 1)
    err = _flux_err(np.full(n, band), seeing)
    sigma = _astro_sigma(seeing, snr, cfg.astrometric_floor_arcsec)
    ra, dec = _offset_en(src["ra"], src["dec"], *rng.normal(0.0, sigma, (2, n)))
    base = SOURCE_ID_BASE + int(visit["observationId"]) * 2**_VISIT_ROW_BITS
    return {
        "diaSourceId": base + np.arange(n, dtype="i8"),
        "ra": ra,
        "dec": dec,
        "raErr": (sigma / 3600.0).astype("f4"),
        "decErr": (sigma / 3600.0).astype("f4"),
        "midpointMjdTai": np.full(n, mid),
        "band": _band_array(np.full(n, band)),
        "psfFlux": (sign * snr * err).astype("f4"),
        "psfFluxErr": err.astype("f4"),
        "snr": snr.astype("f4"),
    }


# -- the archive ------------------------------------------------------------------------------

_PRED_TYPES = {
    "ssObjectId": "i8",
    "ra": "f8",
    "dec": "f8",
    "semiMajorAxis": "f4",
    "semiMinorAxis": "f4",
    "positionAngle": "f4",
    "predictedMag": "f4",
    "mjd": "f8",
}


def _events(
    rng: np.random.Generator, visit: np.void, src_rel: str, pred_rel: str, n: int, cfg: SimConfig
) -> list[Event]:
    """The visit's three events; ids are fixed by the visit, times drawn around the exposure."""
    vid = int(visit["observationId"])
    start = unix_time(float(visit["observationStartMJD"]))
    end = start + float(visit["visitTime"])
    t_next = start - rng.uniform(*cfg.next_visit_lead_s)
    t_det = end + rng.uniform(*cfg.detection_delay_s)
    t_pred = t_det + rng.uniform(-cfg.predictions_jitter_s, cfg.predictions_jitter_s)
    next_body = {
        "mjd": float(visit["observationStartMJD"]),
        "ra": float(visit["fieldRA"]),
        "dec": float(visit["fieldDec"]),
        "filter": str(visit["filter"]),
        "seeing": float(visit["seeingFwhmEff"]),
        "radius": float(cfg.fov_radius),
        "exposure_time": float(visit["visitExposureTime"]),
    }
    bodies = (
        (NEXT_VISIT, "telescope", t_next, next_body),
        (DIASOURCES_READY, "detection", t_det, {"paths": [src_rel], "n_sources": n}),
        (PREDICTIONS_READY, "nightmops", t_pred, {"paths": [pred_rel]}),
    )
    return [
        Event.new(kind, vid, body, source, round(t, 3), f"{kind}-{vid}")
        for kind, source, t, body in bodies
    ]


_OBJECTS = "catalogue/objects.parquet"
_HISTORY = "catalogue/diasources.parquet"
_TRUTH = {
    "diasources": "truth/diasources.parquet",
    "movers": "truth/movers.parquet",
    "transients": "truth/transients.parquet",
    "predictions": "truth/predictions.parquet",
}


def _write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, use_dictionary=_string_columns(table))


def simulate(
    cadence_path: str | PathLike[str],
    out_dir: str | PathLike[str],
    night_mjd: float | None = None,
    config: SimConfig | None = None,
    region: Region | None = None,
    max_visits: int | None = None,
    overwrite: bool = False,
    after: str | PathLike[str] | None = None,
) -> dict[str, Any]:
    """Simulate one night into a night archive, alone or as the next night of a survey.

    Parameters
    ----------
    cadence_path : str or Path
        OpSim-format SQLite file (see `association.nights.opsim`).
    out_dir : str or Path
        The archive directory to create (must be empty unless `overwrite`).
    night_mjd : float, optional
        Night start, MJD x.5; when None, the first night of the file (after
        `after`'s night when continuing).
    config : SimConfig, optional
        What to simulate; the defaults when None. When continuing, the
        earlier night's (a different one is an error).
    region : (ra, dec, radius_deg), optional
        Keep only visits centred within the region.
    max_visits : int, optional
        Keep only the night's first visits (of the cadence: with
        ``config.pair_gap_s`` each brings its second exposure).
    overwrite : bool
        Write into a non-empty directory.
    after : str or Path, optional
        An archive of an earlier night of the survey (simulated by this
        function): continue the sky it left (see the module docstring).

    Returns
    -------
    dict
        The archive's manifest.

    Raises
    ------
    SurveyError
        `after` cannot be continued, or not by this night and config.
    """
    before, cfg = None, config or SimConfig()
    if after is not None:
        before, earlier = read_state(after)
        cfg = _continued_config(earlier, config, after)
    night_mjd = _pick_night(cadence_path, night_mjd, before, after)
    visits = read_cadence(cadence_path, night_mjd, region, max_visits)
    if visits.size == 0:
        raise CadenceError(f"{cadence_path}: no visits in night {night_mjd} (region {region})")
    if cfg.pair_gap_s > 0:
        visits = with_pairs(visits, cfg.pair_gap_s)
    night = _plan(visits, cfg.fov_radius)
    out = ArchiveWriter(out_dir, overwrite=overwrite)
    first = night_mjd if before is None else before.first_night
    index = 0 if before is None else before.index + 1
    known = np.empty(0, "i8") if before is None else before.patches
    det, catalogue_counts = _write_catalogue(out, night, first, cfg, index, known)
    movers = _night_movers(night, cfg, before)
    transients = _night_transients(night, cfg, before)
    counts = _write_visits(out, night, det, cfg, movers, transients) | catalogue_counts
    state = SurveyState(
        id=survey_id(Path(cadence_path).name, first, cfg.to_dict())
        if before is None
        else before.id,
        first_night=first,
        nights=[*(before.nights if before else []), float(night_mjd)],
        patches=np.union1d(known, night.patches),
        movers=movers.truth,
        transients=transients,
    )
    counts["survey_patches"] = int(state.patches.size)
    source = {
        "generator": "association.nights.simulate",
        "cadence": Path(cadence_path).name,
        "night_mjd": float(night_mjd),
        "region": None if region is None else [float(x) for x in region],
        "max_visits": max_visits,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "survey": write_state(out.path, state, before.nights[-1] if before else None),
    }
    extra = {
        "fov_radius_deg": cfg.fov_radius,
        "patch_order": PATCH_ORDER,
        "fine_order": DEFAULT_FINE_ORDER,
        "time": "MJD (TAI) in tables; event times unix s = (mjd - 40587) * 86400",
        "raErr": "on-sky 1-sigma error along RA (of ra*cos(dec)), deg",
        "visit_midpoint": "observationStartMJD + visitTime / 2",
        "catalogue_visit": f"earlier DIASources have visit {HISTORY_VISIT} (no visit of this cadence)",
        "catalogue": "the patches no earlier night of the survey touched"
        if before
        else "every patch the night touches",
    }
    return out.write_manifest(
        source=source,
        counts=counts,
        catalogue_objects=_OBJECTS,
        catalogue_diasources=_HISTORY,
        truth=_TRUTH,
        extra=extra,
    )


def _continued_config(
    earlier: dict[str, Any], config: SimConfig | None, after: str | PathLike[str]
) -> SimConfig:
    """The sky settings of the night `after`; `config`, if given, must be the same."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in earlier["config"].items()}
    try:
        cfg = SimConfig(**values)
    except (TypeError, ValueError) as exc:
        raise SurveyError(f"{after}: its simulation settings cannot be read: {exc}") from None
    if config is not None and config.to_dict() != cfg.to_dict():
        differ = sorted(k for k, v in config.to_dict().items() if cfg.to_dict().get(k) != v)
        raise SurveyError(
            f"{after}: a survey keeps its seed and sky settings; these differ from the "
            f"earlier night's: {', '.join(differ)}"
        )
    return cfg


def _pick_night(
    cadence_path: str | PathLike[str],
    night_mjd: float | None,
    before: SurveyState | None,
    after: str | PathLike[str] | None,
) -> float:
    """The night to simulate: as given, else the cadence's first (after `before`'s last)."""
    last = -np.inf if before is None else before.nights[-1]
    if night_mjd is not None:
        if night_mjd <= last:
            raise SurveyError(
                f"night {night_mjd:g} does not come after the night of {after} ({last:g})"
            )
        return night_mjd
    found = [n for n, _ in nights(cadence_path) if n > last]
    if not found:
        where = "" if before is None else f" after night {last:g} of {after}"
        raise CadenceError(f"{cadence_path}: no visits{where}")
    return found[0]


def with_pairs(visits: np.ndarray, gap_s: float) -> np.ndarray:
    """The cadence with a second exposure of each visit ``gap_s`` later, in start order."""
    if visits.size and visits["observationId"].max() >= PAIR_ID_OFFSET:
        raise ValueError(f"observationIds reach {PAIR_ID_OFFSET}: no room for pair ids")
    twin = visits.copy()
    twin["observationId"] += PAIR_ID_OFFSET
    twin["observationStartMJD"] += gap_s / 86400.0
    both = np.concatenate([visits, twin])
    return both[np.lexsort((both["observationId"], both["observationStartMJD"]))]


def _write_catalogue(
    out: ArchiveWriter,
    night: _Night,
    survey_mjd: float,
    cfg: SimConfig,
    night_index: int,
    known: np.ndarray,
) -> tuple[np.ndarray, dict[str, int]]:
    """Write the starting catalogue of the patches not `known` to the survey yet.

    Returns the night's detections of the Objects of every patch it touches,
    sorted by visit, and the counts.
    """
    obj_sink = _ParquetSink(out.path_for(_OBJECTS), objects_table, OBJECT_DTYPE)
    hist_sink = _ParquetSink(out.path_for(_HISTORY), diasources_table, DIASOURCE_DTYPE)
    dets, n_var = [], 0
    new = ~np.isin(night.patches, known)
    for patch, is_new in zip(night.patches, new, strict=True):
        obj, hist, det = _patch_catalogue(int(patch), night, survey_mjd, cfg, night_index)
        dets.append(det)
        if not is_new:
            continue
        obj_sink.add(obj)
        hist_sink.add(hist)
        n_var += int(obj["isVariable"].sum())
    obj_sink.close()
    hist_sink.close()
    det = np.concatenate(dets)
    counts = {
        "objects_preloaded": obj_sink.total,
        "objects_variable": n_var,
        "catalogue_diasources": hist_sink.total,
        "patches": int(night.patches.size),
        "patches_new": int(new.sum()),
    }
    return det[np.argsort(det["vis"], kind="stable")], counts


def _write_visits(
    out: ArchiveWriter,
    night: _Night,
    det: np.ndarray,
    cfg: SimConfig,
    movers: _Movers,
    transients: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Write each visit's files and events, then the truth; return the counts."""
    bounds = np.searchsorted(det["vis"], np.arange(night.visits.size + 1))
    ids, vis, truth, preds = [], [], [], []
    for i, visit in enumerate(night.visits):
        vid = int(visit["observationId"])
        cat_det = det[bounds[i] : bounds[i + 1]]
        src, meas, pred, rng = _visit(i, night, cat_det, movers, transients, cfg)
        src_rel = f"data/visit_{vid}_diasources.parquet"
        pred_rel = f"data/visit_{vid}_predictions.parquet"
        _write(pa.table(meas), out.path_for(src_rel))
        ptab = pa.table({k: np.asarray(pred[k], dtype=t) for k, t in _PRED_TYPES.items()})
        _write(ptab, out.path_for(pred_rel))
        for e in _events(rng, visit, src_rel, pred_rel, src.size, cfg):
            out.add_event(e)
        ids.append(meas["diaSourceId"])
        vis.append(np.full(src.size, vid, dtype="i8"))
        truth.append(src)
        preds.append(
            pa.table(
                {
                    "visit": np.full(len(ptab), vid, dtype="i8"),
                    "ssObjectId": np.asarray(pred["ssObjectId"], dtype="i8"),
                    "right": ~np.asarray(pred["wrong"], dtype=bool),
                }
            )
        )

    src = np.concatenate(truth)
    kind = pa.DictionaryArray.from_arrays(pa.array(src["kind"]), pa.array(list(KINDS)))
    cols = {"diaSourceId": np.concatenate(ids), "visit": np.concatenate(vis)}
    cols["kind"] = kind.cast(pa.string())
    cols.update({c: src[c] for c in ("diaObjectId", "ssObjectId", "transientId", "predicted")})
    _write(pa.table(cols), out.path_for(_TRUTH["diasources"]))
    mt = {k: v for k, v in movers.truth.items() if k != "snr"}
    _write(pa.table(mt), out.path_for(_TRUTH["movers"]))
    tr = pa.table({k: v for k, v in transients.items() if k != "snr"})
    _write(tr, out.path_for(_TRUTH["transients"]))
    pred_truth = pa.concat_tables(preds)
    _write(pred_truth, out.path_for(_TRUTH["predictions"]))

    by_kind = np.bincount(src["kind"], minlength=len(KINDS))
    right = pred_truth["right"].to_numpy(zero_copy_only=False)
    return {
        "visits": int(night.visits.size),
        "diasources": int(src.size),
        "diasources_by_kind": {k: int(c) for k, c in zip(KINDS, by_kind, strict=True)},
        "predictions": int(right.size),
        "predictions_wrong": int((~right).sum()),
        "movers": int(mt["ra"].size),
        "transients": len(tr),
    }
