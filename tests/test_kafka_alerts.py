"""The alert stream against a real broker: messages, keys, headers, acknowledgement, the consumer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from fastavro.validation import validate

from association.alerts.consumer import AlertStreamReader, StreamSummary, decode_alert
from association.alerts.kafka import (
    TIMESTAMP_HEADER,
    AlertDeliveryError,
    AlertProducer,
    AlertStreamConfig,
    alert_key,
    key_id,
)
from association.alerts.rubin import RubinAlertEncoder
from association.cli.main import main as nightpipe
from association.stages.store import passing
from events.kafka import KafkaConnection, KafkaError, create_topics
from events.tansu import KafkaServer
from framework.retry import Backoff, retrying
from tests.alertdata import make_visit

MJD = 60500.5
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def encoder() -> RubinAlertEncoder:
    return RubinAlertEncoder()


@pytest.fixture
def topic(kafka_server: KafkaServer) -> str:
    name = f"alerts-{uuid.uuid4().hex[:8]}"
    kafka_server.create_topics(name, partitions=2)
    return name


def stream(kafka_server: KafkaServer, topic: str, **kw) -> AlertStreamConfig:
    return AlertStreamConfig(KafkaConnection(kafka_server.bootstrap), topic=topic, **kw)


def test_publish_visit_one_message_per_alert(kafka_server, topic, encoder):
    sources, objects, recent, moving = make_visit(n=80, n_moving=8)
    alerts = encoder.encode(sources, objects, recent, moving, processed_mjd=MJD)
    records = {
        r["diaSourceId"]: r
        for r in encoder.records(sources, objects, recent, moving, processed_mjd=MJD)
    }
    producer = AlertProducer(stream(kafka_server, topic))
    before = time.time() * 1000
    published = producer.publish_visit(alerts, visit=7)
    producer.close()
    assert published.topic == topic and published.n_alerts == 80
    msgs = kafka_server.messages(topic)
    assert len(msgs) == 80
    assert sum(b - a + 1 for a, b in published.offsets.values()) == 80
    seen = set()
    for m in msgs:
        a, b = published.offsets[m.partition()]
        assert a <= m.offset() <= b
        sid, rec = decode_alert(m.value())
        assert sid == encoder.schema_id
        assert validate(rec, encoder.schema)
        assert key_id(m.key()) == rec["diaSourceId"] and m.key() == alert_key(rec["diaSourceId"])
        assert len(m.key()) == 8
        headers = dict(m.headers())
        assert before <= float(headers[TIMESTAMP_HEADER]) <= time.time() * 1000
        assert m.value() == alerts.message(int(list(alerts.ids).index(rec["diaSourceId"])))
        assert rec["diaSourceId"] in records
        seen.add(rec["diaSourceId"])
    assert seen == set(records)
    body = published.event_fields()
    assert body["topic"] == topic and set(body["offsets"]) <= {"0", "1"}


@pytest.mark.parametrize("idempotent", [False, True])
def test_republish_sends_same_keys_again(kafka_server, topic, encoder, idempotent):
    """At-least-once: a visit published twice gives duplicates, deduplicated by key."""
    sources, objects, recent, moving = make_visit(n=30, n_moving=3, seed=4)
    alerts = encoder.encode(sources, objects, recent, moving, processed_mjd=MJD)
    producer = AlertProducer(stream(kafka_server, topic, idempotent=idempotent))
    producer.publish_visit(alerts)
    producer.publish_visit(alerts)
    msgs = kafka_server.messages(topic)
    assert len(msgs) == 60
    assert {key_id(m.key()) for m in msgs} == set(sources["diaSourceId"].tolist())


def test_missing_topic_refused_at_start(kafka_server):
    with pytest.raises(KafkaError, match=r"alert topic 'no-such-topic' .* does not exist"):
        AlertProducer(stream(kafka_server, "no-such-topic"))


def test_broker_outage_is_passing_and_retried(encoder):
    """The broker goes away: publish_visit raises a passing error; the Store's retry gets through."""
    sources, objects, recent, moving = make_visit(n=20, n_moving=2)
    alerts = encoder.encode(sources, objects, recent, moving, processed_mjd=MJD)
    with KafkaServer() as server:
        server.create_topics("alerts")
        producer = AlertProducer(stream(server, "alerts", delivery_timeout_s=1.0))
        producer.publish_visit(alerts)
        port = int(server.bootstrap.rsplit(":", 1)[1])
        server.stop()
        with pytest.raises(AlertDeliveryError, match=r"visit 3: .*20 alerts") as info:
            producer.publish_visit(alerts, visit=3)
        assert passing(info.value)

        def come_back() -> None:
            time.sleep(1.5)
            server.start(port=port)  # memory storage: back empty
            create_topics(KafkaConnection(server.bootstrap), ["alerts"])

        thread = threading.Thread(target=come_back)
        thread.start()
        retries: list[BaseException] = []
        try:
            published = retrying(
                lambda: producer.publish_visit(alerts, visit=3),
                passing,
                Backoff(budget=60.0, first=0.5, longest=2.0),
                lambda attempt, delay, exc: retries.append(exc),
            )
        finally:
            thread.join()
        assert retries and all(isinstance(e, AlertDeliveryError) for e in retries)
        assert published.n_alerts == 20
        keys = {key_id(m.key()) for m in server.messages("alerts")}
        assert keys == set(sources["diaSourceId"].tolist())


def test_refused_alert_named(kafka_server, topic, encoder):
    sources, objects, recent, moving = make_visit(n=10, n_moving=0)
    alerts = encoder.encode(sources, objects, recent, moving, processed_mjd=MJD)
    config = stream(kafka_server, topic, producer={"message.max.bytes": 1000})
    with pytest.raises(
        AlertDeliveryError, match=r"alert diaSourceId \d+ \(\d+ bytes\) refused"
    ) as info:
        AlertProducer(config).publish_visit(alerts)
    assert not passing(info.value)  # sending it again cannot help: the visit fails


def test_unframed_alerts_refused(kafka_server, topic, encoder):
    sources, objects, recent, moving = make_visit(n=5, n_moving=0)
    alerts = encoder.encode(sources, objects, recent, moving, processed_mjd=MJD, framed=False)
    with pytest.raises(ValueError, match="Confluent header"):
        AlertProducer(stream(kafka_server, topic)).publish_visit(alerts)


def test_reader_and_summary(kafka_server, topic, encoder):
    sources, objects, recent, moving = make_visit(n=40, n_moving=5, seed=2)
    alerts = encoder.encode(sources, objects, recent, moving, processed_mjd=MJD)
    producer = AlertProducer(stream(kafka_server, topic))
    producer.publish_visit(alerts)
    producer.publish_visit(alerts)  # the same again
    connection = KafkaConnection(kafka_server.bootstrap)
    reader = AlertStreamReader(connection, topic, from_beginning=True)
    summary = StreamSummary(topic)
    for a in reader.read(to_end=True):
        summary.add(a)
    reader.close()
    s = summary.as_dict()
    assert s["alerts"] == 80 and s["unique_keys"] == 40 and s["duplicates"] == 40
    assert s["with_ssSource"] == 10 and s["schemas"] == {encoder.version: 80}
    assert s["undecodable"] == 0
    # Not from the beginning: a reader made now reads what is published from now on.
    # (Made on an empty topic: Tansu answers ListOffsets "latest" with the last
    # batch's first offset, so on a filled topic it would re-read that batch;
    # Kafka answers the end.)
    fresh = f"{topic}-late"
    kafka_server.create_topics(fresh)
    late = AlertStreamReader(connection, fresh)
    assert list(late.read(to_end=True)) == []  # positioned at the end
    AlertProducer(stream(kafka_server, fresh)).publish_visit(alerts)
    got = [a.key for a in late.read(count=40, idle=30)]
    late.close()
    assert sorted(got) == sorted(sources["diaSourceId"].tolist())


def test_cli_lines_and_summary(kafka_server, topic, encoder, capsys):
    sources, objects, recent, moving = make_visit(n=12, n_moving=2, seed=3)
    alerts = encoder.encode(sources, objects, recent, moving, processed_mjd=MJD)
    AlertProducer(stream(kafka_server, topic)).publish_visit(alerts)
    args = ["alerts", "--bootstrap", kafka_server.bootstrap, "--topic", topic]
    assert nightpipe([*args, "--from-beginning", "--count", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    ids = set(sources["diaSourceId"].tolist())
    for line in lines:
        m = re.match(
            rf"^\d+:\d+ schema={re.escape(encoder.version)} diaSourceId=(\d+) ra=\S+ dec=\S+ band=[ugrizy] ",
            line,
        )
        assert m and int(m[1]) in ids, line
    assert nightpipe([*args, "--from-beginning", "--summary"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["alerts"] == 12 and summary["with_ssSource"] == 2


def test_cli_undecodable_message_reported(kafka_server, topic, capsys):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": kafka_server.bootstrap})
    p.produce(topic, b"\x07not an alert", partition=0)
    p.flush(10)
    args = ["--bootstrap", kafka_server.bootstrap, "--topic", topic, "--from-beginning"]
    assert nightpipe(["alerts", *args, "--count", "1"]) == 1
    assert "undecodable: magic byte is 7" in capsys.readouterr().out


def test_console_script(kafka_server, topic, encoder):
    """The installed ``nightpipe`` command has the subcommand."""
    sources, objects, recent, moving = make_visit(n=3, n_moving=0)
    alerts = encoder.encode(sources, objects, recent, moving, processed_mjd=MJD)
    AlertProducer(stream(kafka_server, topic)).publish_visit(alerts)
    # --summary with --from-beginning reads the whole topic, then stops.
    exe = Path(sys.executable).parent / "nightpipe"
    args = ["--bootstrap", kafka_server.bootstrap, "--topic", topic, "--from-beginning"]
    out = subprocess.run(
        [str(exe), "alerts", *args, "--summary"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout)["alerts"] == 3


def test_readme_consumer_snippet(kafka_server, topic, encoder):
    """The README's ten-line consumer runs and prints a line per alert."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Alerts over Kafka") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    lines = [line for line in code.splitlines() if line.strip()]
    assert len([line for line in lines if "import" not in line]) <= 10
    sources, objects, recent, moving = make_visit(n=4, n_moving=1)
    alerts = encoder.encode(sources, objects, recent, moving, processed_mjd=MJD)
    AlertProducer(stream(kafka_server, topic)).publish_visit(alerts)
    program = code.replace("localhost:9092", kafka_server.bootstrap).replace(
        '"alerts"', repr(topic)
    )
    program = program.replace("poll(10.0)", "poll(6.0)")
    # Tansu holds a new group's first JoinGroup for the rebalance timeout
    # (max.poll.interval.ms, 5 min by default); Kafka waits 3 s.
    extra = '"max.poll.interval.ms": 6000, "session.timeout.ms": 6000'
    program = program.replace('"earliest"', f'"earliest", {extra}')
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=True
    )
    printed = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(printed) == 4
    assert {int(line.split()[0]) for line in printed} == set(sources["diaSourceId"].tolist())
