"""Alert packets: Avro records of the schema in ``schemas/alert.avsc``.

One Object Container File per visit. Numpy rows (DIASOURCE_DTYPE,
OBJECT_DTYPE) become plain dicts; NaN, and an id of 0, become null in the
nullable fields. `write_visit_alerts` writes the same records straight from
the arrays with the compiled encoder of `association.alerts.avro`.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from association.alerts.avro import SCHEMA_PATH, write_alert_file
from association.columns import BANDS

CODEC = "deflate" if importlib.util.find_spec("zlib") else "null"
"""Compression of the container files (fastavro's deflate needs zlib)."""

DEFLATE_LEVEL = 1
"""zlib level of `write_visit_alerts`: on benchmark alert data 2.7x faster than
zlib's default 6, for files 4% larger."""


@functools.cache
def alert_schema() -> dict:
    """The parsed Avro schema ``nightpipe.alert.Alert``."""
    return fastavro.schema.load_schema(str(SCHEMA_PATH))


def build_alert(
    alert_id: int,
    source_row: np.void,
    object_row: np.void | None,
    prv_rows: np.ndarray,
) -> dict[str, Any]:
    """One alert packet as a dict ready for `write_alerts`.

    Parameters
    ----------
    alert_id : int
        Unique id of the alert.
    source_row : DIASOURCE_DTYPE row
        The DIASource alerted on.
    object_row : OBJECT_DTYPE row or None
        Its Object after this visit, if it has one.
    prv_rows : DIASOURCE_DTYPE array
        Earlier DIASources of the Object, oldest first (may be empty).
    """
    return {
        "alertId": int(alert_id),
        "diaSource": _dia_source(source_row),
        "diaObject": None if object_row is None else _dia_object(object_row),
        "prvDiaSources": [_dia_source(row) for row in prv_rows],
    }


def write_alerts(path: str | Path, alerts: list[dict]) -> int:
    """Write a visit's alerts as one Avro container file; return how many.

    The file appears complete or not at all (written aside, then renamed).
    Zero alerts give a valid file holding only the schema.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as out:
            fastavro.writer(out, alert_schema(), alerts, codec=CODEC)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(alerts)


def write_visit_alerts(
    path: str | Path, sources: np.ndarray, objects: np.ndarray, recent: np.ndarray
) -> int:
    """Write a visit's alert file with the compiled encoder; return how many alerts.

    Same packets as `write_alerts` of ``build_alerts(sources, objects, recent)``,
    without per-alert dicts: one per DIASource with no moving-object match
    (``ssObjectId == 0``), ``alertId`` = diaSourceId. The sync marker derives
    from the file name, so a visit written again gives the same bytes.

    Parameters
    ----------
    path : str or Path
        The container file to write (atomically).
    sources : DIASOURCE_DTYPE array
        The visit's DIASources.
    objects : OBJECT_DTYPE array
        Objects after the visit, sorted by diaObjectId; an alert whose
        diaObjectId is not among them gets a null ``diaObject``.
    recent : DIASOURCE_DTYPE array
        Earlier DIASources, sorted by (diaObjectId, midpointMjdTai).
    """
    alerting = sources[sources["ssObjectId"] == 0]
    ids = alerting["diaObjectId"]
    at = np.searchsorted(objects["diaObjectId"], ids)
    found = at < len(objects)
    found[found] = objects["diaObjectId"][at[found]] == ids[found]
    lo = np.searchsorted(recent["diaObjectId"], ids, side="left")
    hi = np.searchsorted(recent["diaObjectId"], ids, side="right")
    return write_alert_file(
        path,
        alerting,
        objects,
        np.where(found, at, -1),
        recent,
        lo,
        hi,
        codec=CODEC,
        compression_level=DEFLATE_LEVEL,
    )


def read_alerts(path: str | Path) -> list[dict]:
    """All alert packets of a container file."""
    with Path(path).open("rb") as fo:
        return list(fastavro.reader(fo))


def _dia_source(row: np.void) -> dict[str, Any]:
    return {
        "diaSourceId": int(row["diaSourceId"]),
        "visit": int(row["visit"]),
        "diaObjectId": int(row["diaObjectId"]) or None,
        "ra": float(row["ra"]),
        "dec": float(row["dec"]),
        "raErr": _nullable(row["raErr"]),
        "decErr": _nullable(row["decErr"]),
        "midpointMjdTai": float(row["midpointMjdTai"]),
        "band": BANDS[int(row["band"])],
        "psfFlux": float(row["psfFlux"]),
        "psfFluxErr": float(row["psfFluxErr"]),
        "snr": _nullable(row["snr"]),
    }


def _dia_object(row: np.void) -> dict[str, Any]:
    out = {
        "diaObjectId": int(row["diaObjectId"]),
        "ra": float(row["ra"]),
        "dec": float(row["dec"]),
        "nDiaSources": int(row["nDiaSources"]),
        "firstMjd": float(row["firstMjd"]),
        "lastMjd": float(row["lastMjd"]),
        "isVariable": bool(row["isVariable"]),
    }
    for i, b in enumerate(BANDS):
        n = int(row["psfFluxNdata"][i])
        m2 = float(row["psfFluxM2"][i])
        out[f"{b}_psfFluxMean"] = _nullable(row["psfFluxMean"][i]) if n > 0 else None
        # Sample standard deviation from Welford's sum of squared deviations.
        out[f"{b}_psfFluxSigma"] = math.sqrt(max(m2, 0.0) / (n - 1)) if n > 1 else None
    return out


def _nullable(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
