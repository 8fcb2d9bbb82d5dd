"""A visit's alert output as configured: files under either schema, the stream, the event fields."""

from __future__ import annotations

import uuid
from pathlib import Path

import fastavro
import numpy as np
import pytest
from fastavro.validation import validate

from association.alerts.consumer import decode_alert
from association.alerts.kafka import key_id
from association.alerts.output import AlertOutputConfig, VisitAlertOutput
from association.alerts.packets import read_alerts, write_visit_alerts
from association.alerts.rubin_schema import latest_version, load_alert_schema, schema_id
from events.envelope import Event
from events.types import ALERTS_READY
from events.validate import parse_event
from tests.alertdata import make_visit

MJD = 60500.5


def test_rubin_file_and_stream_hold_the_same_valid_alerts(kafka_server, tmp_path: Path):
    """Over a few visits: every alert valid under the latest schema, the file = the topic."""
    topic = f"alerts-{uuid.uuid4().hex[:8]}"
    kafka_server.create_topics(topic, partitions=3)
    out = VisitAlertOutput(
        AlertOutputConfig(
            file_format="rubin", kafka_bootstrap=kafka_server.bootstrap, kafka_topic=topic
        )
    )
    out.warm_up()
    latest = load_alert_schema()
    file_ids, expected = [], set()
    for visit in (1, 2, 3):
        sources, objects, recent, moving = make_visit(n=50, n_moving=5, seed=visit)
        sources["diaSourceId"] += visit * 10**9
        moving = type(moving)(moving.dia_source_id + visit * 10**9, moving.predictions)
        assert out.alerting(sources).all()
        done = out.publish(visit, tmp_path, sources, objects, recent, moving, processed_mjd=MJD)
        assert done.n_alerts == 50 and done.path == str(tmp_path / f"visit_{visit}.avro")
        fields = done.event_fields()
        body = {**fields, "n_alerts": 50, "n_sources": 50, "n_new_objects": 0, "n_moving": 5}
        parse_event(Event.new(ALERTS_READY, visit, body).to_dict())  # a valid event body
        assert fields["topic"] == topic
        with open(done.path, "rb") as fo:
            records = list(fastavro.reader(fo))
        assert all(validate(r, latest) for r in records)
        file_ids += [r["diaSourceId"] for r in records]
        expected |= set(sources["diaSourceId"].tolist())
    out.close()
    messages = kafka_server.messages(topic)
    stream_ids = []
    for m in messages:
        sid, rec = decode_alert(m.value())
        assert sid == schema_id(latest_version()) and validate(rec, latest)
        assert key_id(m.key()) == rec["diaSourceId"]
        stream_ids.append(rec["diaSourceId"])
    assert sorted(stream_ids) == sorted(file_ids) and set(file_ids) == expected


def test_own_schema_files_stay_as_they_were(tmp_path: Path):
    sources, objects, recent, moving = make_visit(n=30, n_moving=4)
    out = VisitAlertOutput(AlertOutputConfig())  # nightpipe files, no stream
    mask = out.alerting(sources)
    assert mask.sum() == 26 and not mask[sources["ssObjectId"] != 0].any()
    done = out.publish(9, tmp_path, sources, objects, recent, moving, processed_mjd=MJD)
    assert done.n_alerts == 26 and done.stream is None
    assert done.event_fields() == {"path": str(tmp_path / "visit_9.avro")}
    ref = tmp_path / "ref" / "visit_9.avro"
    ref.parent.mkdir()
    write_visit_alerts(ref, sources[mask], objects, recent)
    assert Path(done.path).read_bytes() == ref.read_bytes()
    assert len(read_alerts(done.path)) == 26


def test_stream_only(kafka_server, tmp_path: Path):
    topic = f"alerts-{uuid.uuid4().hex[:8]}"
    kafka_server.create_topics(topic)
    out = VisitAlertOutput(
        AlertOutputConfig(
            file_format="none", kafka_bootstrap=kafka_server.bootstrap, kafka_topic=topic
        )
    )
    sources, objects, recent, moving = make_visit(n=10, n_moving=1)
    done = out.publish(4, tmp_path, sources, objects, recent, moving, processed_mjd=MJD)
    assert done.path is None and done.event_fields()["path"] == ""
    assert done.stream.offsets == {0: (0, 9)}
    assert list(tmp_path.iterdir()) == []
    assert len(kafka_server.messages(topic)) == 10


def test_schema_version_is_a_setting(tmp_path: Path):
    sources, objects, recent, moving = make_visit(n=8, n_moving=1)
    out = VisitAlertOutput(AlertOutputConfig(file_format="rubin", schema_version="10.0"))
    done = out.publish(1, tmp_path, sources, objects, recent, moving, processed_mjd=MJD)
    with open(done.path, "rb") as fo:
        reader = fastavro.reader(fo)
        assert reader.writer_schema["name"] == "lsst.v10_0.alert"
        assert len(list(reader)) == 8


def test_bad_file_format_named():
    with pytest.raises(ValueError, match="file_format must be one of"):
        AlertOutputConfig(file_format="json")
    assert np.array_equal(
        VisitAlertOutput(AlertOutputConfig(file_format="rubin")).alerting(make_visit(5, 2)[0]),
        np.ones(5, bool),
    )
