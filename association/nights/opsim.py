"""Read an observing cadence from an OpSim-format SQLite database (``observations`` table)."""

from __future__ import annotations

import sqlite3
from os import PathLike
from pathlib import Path

import numpy as np

from association.sky.fov import angular_distance_deg

CADENCE_DTYPE = np.dtype(
    [
        ("observationId", "i8"),
        ("observationStartMJD", "f8"),  # exposure start, MJD (TAI)
        ("visitTime", "f8"),  # s, whole visit
        ("visitExposureTime", "f8"),  # s, open shutter
        ("filter", "U1"),
        ("seeingFwhmEff", "f8"),  # arcsec
        ("fieldRA", "f8"),  # deg
        ("fieldDec", "f8"),  # deg
    ]
)
"""One visit of a cadence."""

BUNDLED_DB = Path(__file__).parents[1] / "data" / "opsim_5nights.db"
"""Five nights of OpSim ``baseline_v2.0`` shipped with nightpipe (see data/README.md)."""


class CadenceError(ValueError):
    """A cadence file cannot be read as OpSim, or holds no visits for the selection."""


Region = tuple[float, float, float]
"""(ra, dec, radius), all degrees: visits whose centre lies within `radius` of (ra, dec)."""


def night_start(mjd: np.ndarray | float) -> np.ndarray:
    """The start (MJD x.5, local noon in Chile) of the night each MJD falls in."""
    return np.floor(np.asarray(mjd, dtype="f8") - 0.5) + 0.5


def _connect(db_path: str | PathLike[str]) -> sqlite3.Connection:
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such OpSim database")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='observations'"
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise CadenceError(f"{path}: not an SQLite database: {exc}") from None
    if found is None:
        conn.close()
        raise CadenceError(f"{path}: no 'observations' table; not an OpSim database")
    return conn


def nights(db_path: str | PathLike[str]) -> list[tuple[float, int]]:
    """The nights in a database: (night start MJD, number of visits), in order."""
    conn = _connect(db_path)
    try:
        mjd = np.array(conn.execute("SELECT observationStartMJD FROM observations").fetchall())
    finally:
        conn.close()
    if mjd.size == 0:
        return []
    starts, counts = np.unique(night_start(mjd[:, 0]), return_counts=True)
    return [(float(s), int(c)) for s, c in zip(starts, counts, strict=True)]


def read_cadence(
    db_path: str | PathLike[str],
    night_mjd: float | None = None,
    region: Region | None = None,
    max_visits: int | None = None,
) -> np.ndarray:
    """Read visits, sorted by start time.

    Parameters
    ----------
    db_path : str or Path
        OpSim SQLite file with an ``observations`` table.
    night_mjd : float, optional
        Night start (MJD x.5); selects ``night_mjd <= observationStartMJD <
        night_mjd + 1``. All visits when None.
    region : (ra, dec, radius_deg), optional
        Keep visits whose pointing centre lies within the region.
    max_visits : int, optional
        Keep the first `max_visits` visits after the other cuts.

    Returns
    -------
    numpy.ndarray
        Structured array of `CADENCE_DTYPE`.
    """
    if night_mjd is not None and (night_mjd - 0.5) % 1.0 != 0.0:
        raise ValueError(
            f"night_mjd must be a night start (MJD x.5, e.g. 60217.5), got {night_mjd}"
        )
    if max_visits is not None and max_visits < 0:
        raise ValueError(f"max_visits must be >= 0, got {max_visits}")
    cols = ", ".join(CADENCE_DTYPE.names)
    sql = f"SELECT {cols} FROM observations"
    args: tuple[float, ...] = ()
    if night_mjd is not None:
        sql += " WHERE observationStartMJD >= ? AND observationStartMJD < ?"
        args = (float(night_mjd), float(night_mjd) + 1.0)
    sql += " ORDER BY observationStartMJD, observationId"
    conn = _connect(db_path)
    try:
        rows = conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        raise CadenceError(f"{db_path}: cannot read the observations table: {exc}") from None
    finally:
        conn.close()
    visits = np.array(rows, dtype=CADENCE_DTYPE) if rows else np.empty(0, CADENCE_DTYPE)
    if region is not None:
        ra0, dec0, radius = (float(x) for x in region)
        visits = visits[
            angular_distance_deg(ra0, dec0, visits["fieldRA"], visits["fieldDec"]) <= radius
        ]
    if max_visits is not None:
        visits = visits[:max_visits]
    return visits
