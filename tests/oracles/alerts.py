"""The reference alert packets (for tests and benchmarks): one dict per alert, then fastavro.

The pipeline writes alerts with the compiled encoder
(`association.alerts.packets.write_visit_alerts`); these build the same
records field by field in plain Python, so the two can be compared record for
record and byte for byte.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from association.alerts.avro import alert_schema
from association.alerts.packets import CODEC
from association.columns import BANDS


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
