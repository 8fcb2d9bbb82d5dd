"""A visit's alerts as records of Rubin's alert schema (``lsst.vMAJOR_MINOR.alert``).

One alert per DIASource given. Its fields:

- ``diaSourceId``: the DIASource's id.
- ``diaSource``: the DIASource. Our columns (`association.columns.DIASOURCE_DTYPE`)
  that the schema has go through by name; ``band`` is written as its letter;
  a ``diaObjectId`` or ``ssObjectId`` of 0 (none) is null, and so is a NaN in
  a nullable float. ``timeProcessedMjdTai`` is the visit's processing time;
  ``exposureTime`` the visit's exposure time when known.
- ``prvDiaSources``: the Object's earlier DIASources (from ``recent``), oldest
  first; null when it has none, as Rubin sends it.
- ``prvDiaForcedSources``: an empty array (nightpipe does no forced photometry).
- ``diaObject``: the Object after this visit; null for a moving-object match.
  ``validityStartMjdTai`` is the visit's processing time (this version of the
  row starts then); ``raErr``/``decErr`` of the mean position; per band
  ``psfFluxMean`` (inverse-variance weighted where the fluxes had errors,
  as Rubin's; else the plain mean), ``psfFluxMeanErr`` and ``psfFluxChi2``
  (where weighted, and the schema has them), ``psfFluxSigma`` (the sample
  standard deviation, null under two points) and ``psfFluxNdata``;
  ``firstDiaSourceMjdTai``/``lastDiaSourceMjdTai`` from ``firstMjd``/``lastMjd``.
- ``ssSource``: for a moving-object match (``ssObjectId != 0``), from the
  prediction it matched: ``ssObjectId``, ``ephRa``/``ephDec`` (the predicted
  position), ``ephVmag`` (the prediction's ``predictedMag``), ``ephOffset``,
  ``ephOffsetRa`` (with cos dec) and ``ephOffsetDec`` (observed minus
  predicted, arcsec), and ``eclLambda``/``eclBeta`` (barycentric mean ecliptic
  of J2000) and ``galLon``/``galLat`` of the observed position; null otherwise.
- ``observation_reason``, ``target_name``, ``mpc_orbits`` and the cutouts: null.

Every other nullable field is null. The required fields nightpipe cannot know
get a fixed fill (`REQUIRED_FILLS`), applied only where the schema version
requires the field and no column gives it:

=========================  =====  =============================================
field                      fill   why
=========================  =====  =============================================
``detector``               -1     no detector in nightpipe; -1 is no real one
``x``, ``y``               NaN    no pixel coordinates
``psfNdata``,              0      no fit was made here, so no pixels were used
``trailNdata``,
``dipoleNdata``
``bboxSize``               0      no footprint
``timeProcessedMjdTai``    NaN    in ``prvDiaSources`` only: not kept
=========================  =====  =============================================
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from association.alerts import schemaless as sa
from association.alerts.avro import container_schema_json, write_container
from association.alerts.packets import CODEC, DEFLATE_LEVEL
from association.alerts.rubin_schema import latest_version, load_alert_schema, schema_id
from association.alerts.wire import HEADER_SIZE, confluent_header
from association.columns import BANDS, DIASOURCE_DTYPE, OBJECT_DTYPE
from association.inputs.readers import PREDICTION_DTYPE

REQUIRED_FILLS: Mapping[str, Mapping[str, float]] = {
    "diaSource": {
        "detector": -1,
        "x": np.nan,
        "y": np.nan,
        "psfNdata": 0,
        "trailNdata": 0,
        "dipoleNdata": 0,
        "bboxSize": 0,
    },
    "prvDiaSources": {
        "detector": -1,
        "x": np.nan,
        "y": np.nan,
        "psfNdata": 0,
        "trailNdata": 0,
        "dipoleNdata": 0,
        "bboxSize": 0,
        "timeProcessedMjdTai": np.nan,
    },
}
"""Per table, the value of each required field no column gives (see the module doc)."""

ZERO_IS_NULL = frozenset({"diaObjectId", "ssObjectId"})
"""Id columns where 0 means none, written null."""

_ROOT = "alert"


@dataclass(frozen=True)
class MovingMatches:
    """A visit's moving-object matches: per matched DIASource, the prediction it matched.

    Parameters
    ----------
    dia_source_id : int ndarray
        The matched DIASources' ids.
    predictions : PREDICTION_DTYPE ndarray
        One prediction row per id, in the same order.
    """

    dia_source_id: np.ndarray
    predictions: np.ndarray

    @classmethod
    def none(cls) -> MovingMatches:
        """No matches."""
        return cls(np.empty(0, np.int64), np.empty(0, PREDICTION_DTYPE))


@dataclass(frozen=True)
class EncodedAlerts:
    """A visit's alerts, encoded, in one buffer.

    Attributes
    ----------
    data : bytes
        The records concatenated, each after the Confluent header if ``framed``.
    ends : int64 ndarray
        End offset in `data` of each alert.
    ids : int64 ndarray
        Each alert's ``diaSourceId``.
    schema_id : int
        The Confluent schema id of the schema version used.
    framed : bool
        Whether each record starts with the 5-byte Confluent header.
    """

    data: bytes
    ends: np.ndarray
    ids: np.ndarray
    schema_id: int
    framed: bool

    def __len__(self) -> int:
        return len(self.ends)

    def message(self, i: int) -> bytes:
        """Alert ``i`` as it goes on the wire (with the header if framed)."""
        start = int(self.ends[i - 1]) if i > 0 else 0
        return self.data[start : int(self.ends[i])]

    def messages(self) -> list[bytes]:
        """Every alert, as `message` gives it."""
        bounds = [0, *self.ends.tolist()]
        data = self.data
        return [data[a:b] for a, b in itertools.pairwise(bounds)]

    def payload(self, i: int) -> bytes:
        """Alert ``i``'s schemaless Avro record alone."""
        return self.message(i)[HEADER_SIZE if self.framed else 0 :]

    def unframed(self) -> EncodedAlerts:
        """The same records without the Confluent header."""
        if not self.framed:
            return self
        n = len(self.ends)
        starts = np.concatenate(([0], self.ends[:-1])) if n else np.empty(0, np.int64)
        keep = np.ones(len(self.data), bool)
        keep[(starts[:, None] + np.arange(HEADER_SIZE)).ravel()] = False
        data = np.frombuffer(self.data, np.uint8)[keep].tobytes()
        ends = self.ends - HEADER_SIZE * np.arange(1, n + 1)
        return EncodedAlerts(data, ends, self.ids, self.schema_id, False)


class RubinAlertEncoder:
    """Encodes a visit's alerts under one version of Rubin's alert schema.

    Parameters
    ----------
    version : str, optional
        ``"MAJOR.MINOR"``; default: the latest that lsst-alert-packet ships.
    """

    def __init__(self, version: str | None = None) -> None:
        self.version = version or latest_version()
        self.schema = load_alert_schema(self.version)
        self.schema_id = schema_id(self.version)
        self.header = confluent_header(self.schema_id)
        self._records = _record_schemas(self.schema)
        self._plans: dict[tuple, sa.Plan] = {}

    def tables(
        self,
        sources: np.ndarray,
        objects: np.ndarray,
        recent: np.ndarray,
        moving: MovingMatches | None = None,
        *,
        processed_mjd: float | None = None,
        exposure_time: float | None = None,
    ) -> dict[str, sa.Table]:
        """The visit as the tables `schemaless` encodes (arguments as in `encode`)."""
        processed = now_mjd_tai() if processed_mjd is None else float(processed_mjd)
        moving = MovingMatches.none() if moving is None else moving
        _check_columns(sources, DIASOURCE_DTYPE, "sources")
        _check_columns(recent, DIASOURCE_DTYPE, "recent")
        _check_columns(objects, OBJECT_DTYPE, "objects")
        _check_sorted(objects["diaObjectId"], "objects", "diaObjectId")
        _check_sorted(recent["diaObjectId"], "recent", "diaObjectId")
        n = len(sources)
        ids = np.asarray(sources["diaSourceId"], np.int64)
        obj_ids = np.asarray(sources["diaObjectId"], np.int64)
        is_moving = np.asarray(sources["ssObjectId"]) != 0
        has_obj = ~is_moving & (obj_ids != 0)

        at = np.searchsorted(objects["diaObjectId"], obj_ids)
        found = has_obj & (at < len(objects))
        found[found] = objects["diaObjectId"][at[found]] == obj_ids[found]
        obj_index = np.full(n, -1, np.int64)
        obj_index[found] = np.arange(int(found.sum()))

        lo = np.searchsorted(recent["diaObjectId"], obj_ids, side="left")
        hi = np.searchsorted(recent["diaObjectId"], obj_ids, side="right")
        hi = np.where(has_obj, hi, lo)
        counts = hi - lo
        prv_rows = _ranges(lo, counts)
        prv_hi = np.cumsum(counts)

        pred_rows = _predictions_for(ids[is_moving], moving)
        ss_index = np.full(n, -1, np.int64)
        ss_index[is_moving] = np.arange(int(is_moving.sum()))
        observed = sources[is_moving]

        tables = {
            _ROOT: sa.Table(
                n,
                {
                    "diaSourceId": sa.Column(ids),
                    "diaSource": sa.Nested("diaSource", np.arange(n)),
                    "prvDiaSources": sa.NestedArray(
                        "prvDiaSources", prv_hi - counts, prv_hi, null=counts == 0
                    ),
                    "prvDiaForcedSources": sa.EMPTY_ARRAY,
                    "diaObject": sa.Nested("diaObject", obj_index),
                    "ssSource": sa.Nested("ssSource", ss_index),
                },
            ),
            "diaSource": _dia_sources(sources, processed, exposure_time),
            "prvDiaSources": _dia_sources(recent, None, None, prv_rows),
            "diaObject": _dia_objects(objects[at[found]], processed),
            "ssSource": _ss_sources(observed, moving.predictions[pred_rows]),
        }
        for name, rec in self._records.items():
            tables[name] = _with_fills(tables[name], rec, REQUIRED_FILLS.get(name, {}))
        return tables

    def encode(
        self,
        sources: np.ndarray,
        objects: np.ndarray,
        recent: np.ndarray,
        moving: MovingMatches | None = None,
        *,
        processed_mjd: float | None = None,
        exposure_time: float | None = None,
        framed: bool = True,
    ) -> EncodedAlerts:
        """Encode one alert per DIASource of `sources`.

        Parameters
        ----------
        sources : DIASOURCE_DTYPE array
            The DIASources to alert on; a row with ``ssObjectId != 0`` is a
            moving-object match.
        objects : OBJECT_DTYPE array
            Objects after the visit, sorted by diaObjectId; a source whose
            Object is not among them gets a null ``diaObject``.
        recent : DIASOURCE_DTYPE array
            Earlier DIASources, sorted by (diaObjectId, midpointMjdTai).
        moving : MovingMatches, optional
            The prediction of every moving-object match in `sources`.
        processed_mjd : float, optional
            Processing time, MJD TAI; default now.
        exposure_time : float, optional
            The visit's exposure time in s; ``exposureTime`` is null without it.
        framed : bool
            Put the Confluent wire header in front of each record.
        """
        tables = self.tables(
            sources,
            objects,
            recent,
            moving,
            processed_mjd=processed_mjd,
            exposure_time=exposure_time,
        )
        data, ends = sa.encode(self._plan(tables), tables, self.header if framed else b"")
        ids = np.ascontiguousarray(sources["diaSourceId"], np.int64)
        return EncodedAlerts(data, ends, ids, self.schema_id, framed)

    def records(self, *args, **kwargs) -> list[dict]:
        """The same alerts as dicts for fastavro (arguments as in `encode`, without `framed`)."""
        tables = self.tables(*args, **kwargs)
        return sa.records(self._plan(tables), tables)

    def write_file(
        self,
        path: str | Path,
        alerts: EncodedAlerts,
        codec: str = CODEC,
        compression_level: int = DEFLATE_LEVEL,
    ) -> int:
        """Write encoded alerts as one Avro container file under this schema; return how many.

        The file appears complete or not at all; its sync marker derives from
        its name, so a visit written again gives the same bytes.
        """
        plain = alerts.unframed()
        return write_container(
            path,
            plain.data,
            plain.ends,
            container_schema_json(self.schema),
            codec=codec,
            compression_level=compression_level,
        )

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the encoder now, not in the first visit."""
        one = np.zeros(1, DIASOURCE_DTYPE)
        one["diaSourceId"] = 1
        self.encode(one, np.zeros(0, OBJECT_DTYPE), one[:0], processed_mjd=0.0)

    def _plan(self, tables: Mapping[str, sa.Table]) -> sa.Plan:
        key = tuple(
            (name, tuple((f, type(s).__name__) for f, s in t.fields.items()))
            for name, t in tables.items()
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = sa.compile_plan(self.schema, _ROOT, tables)
        return plan


def now_mjd_tai() -> float:
    """The current time as MJD TAI."""
    from astropy.time import Time

    return float(Time.now().tai.mjd)


def _record_schemas(schema: dict) -> dict[str, dict]:
    """The record schema of each table, by the alert field that holds it."""
    named: dict[str, dict] = {}
    sa._register(schema, named)
    fields = {f["name"]: f["type"] for f in schema["fields"]}
    out = {}
    for table, fname in (
        ("diaSource", "diaSource"),
        ("prvDiaSources", "prvDiaSources"),
        ("diaObject", "diaObject"),
        ("ssSource", "ssSource"),
    ):
        if fname not in fields:
            continue
        _, t = sa._nullable(fields[fname], named, fname)
        if isinstance(t, dict) and t.get("type") == "array":
            t = sa._resolve(t["items"], named)
        out[table] = t
    return out


def _with_fills(table: sa.Table, record: dict, fills: Mapping[str, float]) -> sa.Table:
    """Add the fill of each field `record` requires and `table` lacks."""
    fields = dict(table.fields)
    for f in record["fields"]:
        if f["name"] in fields or f["name"] not in fills or isinstance(f["type"], list):
            continue
        value = fills[f["name"]]
        dtype = np.float64 if isinstance(value, float) else np.int64
        fields[f["name"]] = sa.Column(np.full(table.n, value, dtype))
    return sa.Table(table.n, fields)


def _dia_sources(
    rows: np.ndarray,
    processed: float | None,
    exposure: float | None,
    take: np.ndarray | None = None,
) -> sa.Table:
    """DIASource columns by name; ``take`` picks rows column by column (a
    structured take of whole rows is several times slower)."""
    if take is not None and len(take) == len(rows) and np.array_equal(take, np.arange(len(rows))):
        take = None
    n = len(rows) if take is None else len(take)
    fields: dict[str, sa.Source] = {}
    for name in rows.dtype.names:
        values = rows[name] if take is None else rows[name][take]
        if name == "band":
            fields[name] = sa.Strings(np.asarray(values, np.int64), tuple(BANDS))
        elif name in ZERO_IS_NULL:
            fields[name] = sa.Column(values, null=values == 0)
        else:
            fields[name] = sa.Column(values)
    if processed is not None:
        fields["timeProcessedMjdTai"] = sa.Column(np.full(n, processed))
    if exposure is not None:
        fields["exposureTime"] = sa.Column(np.full(n, exposure, np.float32))
    return sa.Table(n, fields)


def _dia_objects(rows: np.ndarray, processed: float) -> sa.Table:
    n = len(rows)
    ndata = np.asarray(rows["psfFluxNdata"], np.int64).reshape(n, len(BANDS))
    mean_err = np.asarray(rows["psfFluxMeanErr"], np.float32).reshape(n, len(BANDS))
    weighted = (mean_err > 0) & np.isfinite(mean_err)
    # Rubin's psfFluxMean is the inverse-variance weighted mean, where there is one.
    mean = np.where(
        weighted,
        np.asarray(rows["psfFluxWMean"], np.float32).reshape(n, len(BANDS)),
        np.asarray(rows["psfFluxMean"], np.float32).reshape(n, len(BANDS)),
    )
    chi2 = np.asarray(rows["psfFluxChi2"], np.float32).reshape(n, len(BANDS))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        m2 = np.asarray(rows["psfFluxM2"], np.float64).reshape(n, len(BANDS))
        # Sample standard deviation from Welford's sum of squared deviations.
        sigma = np.sqrt(np.where(m2 < 0.0, 0.0, m2) / (ndata - 1)).astype(np.float32)
    fields: dict[str, sa.Source] = {
        "diaObjectId": sa.Column(rows["diaObjectId"]),
        "ra": sa.Column(rows["ra"]),
        "dec": sa.Column(rows["dec"]),
        "raErr": sa.Column(rows["raErr"]),
        "decErr": sa.Column(rows["decErr"]),
        "nDiaSources": sa.Column(rows["nDiaSources"]),
        "validityStartMjdTai": sa.Column(np.full(n, processed)),
        "firstDiaSourceMjdTai": sa.Column(rows["firstMjd"]),
        "lastDiaSourceMjdTai": sa.Column(rows["lastMjd"]),
    }
    for b, band in enumerate(BANDS):
        fields[f"{band}_psfFluxMean"] = sa.Column(mean[:, b], null=ndata[:, b] <= 0)
        fields[f"{band}_psfFluxMeanErr"] = sa.Column(mean_err[:, b], null=~weighted[:, b])
        fields[f"{band}_psfFluxChi2"] = sa.Column(chi2[:, b], null=~weighted[:, b])
        fields[f"{band}_psfFluxSigma"] = sa.Column(sigma[:, b], null=ndata[:, b] <= 1)
        fields[f"{band}_psfFluxNdata"] = sa.Column(ndata[:, b])
    return sa.Table(n, fields)


def _ss_sources(observed: np.ndarray, predicted: np.ndarray) -> sa.Table:
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite input stays NaN
        return _ss_columns(observed, predicted)


def _ss_columns(observed: np.ndarray, predicted: np.ndarray) -> sa.Table:
    n = len(observed)
    ra, dec = np.asarray(observed["ra"], np.float64), np.asarray(observed["dec"], np.float64)
    pra, pdec = np.asarray(predicted["ra"], np.float64), np.asarray(predicted["dec"], np.float64)
    ecl_lon, ecl_lat = _rotate(_icrs_to("barycentricmeanecliptic"), ra, dec)
    gal_lon, gal_lat = _rotate(_icrs_to("galactic"), ra, dec)
    d_ra = (ra - pra + 180.0) % 360.0 - 180.0
    return sa.Table(
        n,
        {
            "diaSourceId": sa.Column(observed["diaSourceId"]),
            "ssObjectId": sa.Column(predicted["ssObjectId"]),
            "eclLambda": sa.Column(ecl_lon),
            "eclBeta": sa.Column(ecl_lat),
            "galLon": sa.Column(gal_lon),
            "galLat": sa.Column(gal_lat),
            "ephRa": sa.Column(pra),
            "ephDec": sa.Column(pdec),
            "ephVmag": sa.Column(predicted["predictedMag"]),
            "ephOffset": sa.Column(_separation_arcsec(ra, dec, pra, pdec).astype(np.float32)),
            "ephOffsetRa": sa.Column(d_ra * np.cos(np.radians(pdec)) * 3600.0),
            "ephOffsetDec": sa.Column((dec - pdec) * 3600.0),
        },
    )


@functools.cache
def _icrs_to(frame: str) -> np.ndarray:
    """The rotation matrix from ICRS to `frame` (directions only), via astropy."""
    from astropy.coordinates import CartesianRepresentation, SkyCoord

    unit = CartesianRepresentation(np.eye(3))
    return SkyCoord(unit, frame="icrs").transform_to(frame).cartesian.xyz.value


def _rotate(matrix: np.ndarray, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) in degrees of ICRS (ra, dec) after `matrix`."""
    r, d = np.radians(ra), np.radians(dec)
    xyz = np.stack((np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)))
    x, y, z = matrix @ xyz
    lon = np.degrees(np.arctan2(y, x)) % 360.0
    return lon, np.degrees(np.arcsin(np.clip(z, -1.0, 1.0)))


def _separation_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle distance (haversine), arcsec."""
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))) * 3600.0


def _predictions_for(ids: np.ndarray, moving: MovingMatches) -> np.ndarray:
    """Row in ``moving.predictions`` of each moving-object match in `ids`."""
    known = np.asarray(moving.dia_source_id, np.int64)
    if len(known) != len(moving.predictions):
        raise ValueError(
            f"moving matches: {len(known)} diaSourceIds for {len(moving.predictions)} predictions"
        )
    order = np.argsort(known, kind="stable")
    at = np.searchsorted(known[order], ids)
    ok = at < len(known)
    ok[ok] = known[order][at[ok]] == ids[ok]
    if not ok.all():
        missing = ids[~ok][0]
        raise ValueError(
            f"diaSource {missing} is a moving-object match (ssObjectId != 0) with no prediction"
        )
    return order[at]


def _ranges(lo: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(l, l + c) for l, c in zip(lo, counts)])``, vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.int64)
    starts = np.repeat(lo - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    return starts + np.arange(total)


def _check_columns(rows: np.ndarray, dtype: np.dtype, what: str) -> None:
    names = rows.dtype.names or ()
    missing = [n for n in dtype.names if n not in names]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")


def _check_sorted(values: np.ndarray, what: str, column: str) -> None:
    if len(values) > 1:
        bad = np.flatnonzero(np.diff(values) < 0)
        if len(bad):
            raise ValueError(f"{what}: not sorted by {column} (row {bad[0] + 1})")
