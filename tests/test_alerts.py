"""Alert packets: build, write, read back, validate against the schema."""

from __future__ import annotations

import math

import fastavro
import numpy as np
import pytest
from fastavro.validation import validate

from association.alerts.avro import alert_schema
from association.alerts.packets import read_alerts
from association.columns import DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE
from tests.oracles.alerts import build_alert, write_alerts


def sources(n: int, object_id: int = 77) -> np.ndarray:
    out = np.zeros(n, dtype=DIASOURCE_DTYPE)
    out["diaSourceId"] = 100 + np.arange(n)
    out["visit"] = 9
    out["diaObjectId"] = object_id
    out["ra"] = 359.9 + np.arange(n) * 1e-5
    out["dec"] = -30.0
    out["raErr"] = 1e-5
    out["raErr"][::2] = np.nan
    out["decErr"] = 2e-5
    out["midpointMjdTai"] = 60000 + np.arange(n)
    out["band"] = np.arange(n) % NBANDS
    out["psfFlux"] = 1234.5
    out["psfFluxErr"] = 12.25
    out["snr"] = np.nan
    return out


def an_object() -> np.void:
    obj = np.zeros(1, dtype=OBJECT_DTYPE)[0]
    obj["diaObjectId"] = 77
    obj["ra"], obj["dec"] = 359.9, -30.0
    obj["nDiaSources"] = 4
    obj["firstMjd"], obj["lastMjd"] = 60000.0, 60003.0
    obj["psfFluxNdata"] = [0, 1, 3, 0, 0, 0]
    obj["psfFluxMean"] = [np.nan, 10.0, 20.0, np.nan, np.nan, np.nan]
    obj["psfFluxM2"] = [0.0, 0.0, 8.0, 0.0, 0.0, 0.0]
    obj["isVariable"] = True
    return obj


def test_round_trip_validates(tmp_path):
    prv = sources(4)
    new = sources(1)[0]
    alerts = [
        build_alert(1, new, an_object(), prv),
        build_alert(2, new, None, prv[:0]),
    ]
    for alert in alerts:
        assert validate(alert, alert_schema(), raise_errors=True)
    assert write_alerts(tmp_path / "visit9.avro", alerts) == 2
    back = read_alerts(tmp_path / "visit9.avro")
    assert back == alerts
    for record in back:
        assert validate(record, alert_schema(), raise_errors=True)

    with (tmp_path / "visit9.avro").open("rb") as fo:
        reader = fastavro.reader(fo)
        assert reader.writer_schema["name"] == "nightpipe.alert.Alert"
        assert reader.codec in ("deflate", "null")


def test_nullable_fields(tmp_path):
    src = sources(2, object_id=0)
    alert = build_alert(5, src[0], an_object(), src)
    s = alert["diaSource"]
    assert s["diaObjectId"] is None and s["raErr"] is None and s["snr"] is None
    assert alert["prvDiaSources"][1]["raErr"] == pytest.approx(1e-5)
    obj = alert["diaObject"]
    assert obj["u_psfFluxMean"] is None and obj["u_psfFluxSigma"] is None
    assert obj["g_psfFluxMean"] == 10.0 and obj["g_psfFluxSigma"] is None
    assert obj["r_psfFluxSigma"] == pytest.approx(math.sqrt(8.0 / 2))
    assert s["band"] == "u" and alert["prvDiaSources"][1]["band"] == "g"
    write_alerts(tmp_path / "a.avro", [alert])
    assert read_alerts(tmp_path / "a.avro") == [alert]


def test_empty_file_is_valid(tmp_path):
    assert write_alerts(tmp_path / "none.avro", []) == 0
    assert read_alerts(tmp_path / "none.avro") == []
    with (tmp_path / "none.avro").open("rb") as fo:
        assert fastavro.reader(fo).writer_schema["name"] == "nightpipe.alert.Alert"
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_record_is_refused(tmp_path):
    alert = build_alert(1, sources(1)[0], None, sources(0))
    alert["diaSource"]["band"] = 3
    assert not validate(alert, alert_schema(), raise_errors=False)
    with pytest.raises((TypeError, ValueError)):
        write_alerts(tmp_path / "bad.avro", [alert])
    assert not list(tmp_path.iterdir())
