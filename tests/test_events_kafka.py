"""Events in from Kafka against a real broker: journal before commit, resume, duplicates, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from events import types as T
from events.deadletter import DeadLetters
from events.envelope import Event
from events.journal import Journal
from events.kafka import (
    DEFAULT_TOPICS,
    KafkaConnection,
    KafkaError,
    KafkaEventPublisher,
    KafkaEventSource,
    create_topics,
    take_batch,
)
from events.tansu import KafkaServer
from events.validate import parse_event

ROOT = Path(__file__).resolve().parent.parent


def night(n_visits: int) -> list[Event]:
    out = []
    for fov in range(1, n_visits + 1):
        out.append(
            Event.new(T.NEXT_VISIT, fov, {"mjd": 60000.0, "ra": 1.0, "dec": 2.0, "filter": "r"})
        )
        out.append(Event.new(T.DIASOURCES_READY, fov, {"paths": [f"v{fov}.parquet"]}))
        out.append(Event.new(T.PREDICTIONS_READY, fov, {"paths": []}))
    return out


@pytest.fixture
def topics(kafka_server: KafkaServer) -> dict[str, str]:
    """A fresh topic per inbound type, two partitions each."""
    tag = uuid.uuid4().hex[:8]
    names = {t: f"{name}.{tag}" for t, name in DEFAULT_TOPICS.items()}
    create_topics(KafkaConnection(kafka_server.bootstrap), names.values(), partitions=2)
    return names


def drain(source: KafkaEventSource, journal: Journal, dead=None, want: int = 0) -> list[Event]:
    got: list[Event] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        batch = take_batch(source, journal, dead, timeout=0.3)
        got += batch
        if not batch and len(got) >= want:
            return got
    return got


def test_events_journaled_then_committed(kafka_server, topics, tmp_path):
    conn = KafkaConnection(kafka_server.bootstrap)
    events = night(10)
    assert KafkaEventPublisher(conn, topics).publish(events) == 30
    journal = Journal(tmp_path / "journal.sqlite")
    with KafkaEventSource(conn, list(topics.values()), "master") as source:
        got = drain(source, journal, want=30)
        committed = source.committed()
    assert sorted(e.id for e in got) == sorted(e.id for e in events)
    assert journal.count(direction="in") == 30
    assert sum(committed.values()) == 30  # every partition committed past its last event
    # A restarted source resumes after the committed offsets: nothing comes again.
    with KafkaEventSource(conn, list(topics.values()), "master") as again:
        assert again.receive(1.0) == []


def test_uncommitted_events_come_again_and_journal_drops_them(kafka_server, topics, tmp_path):
    """A crash between journaling and committing: redelivered, not acted on twice."""
    conn = KafkaConnection(kafka_server.bootstrap)
    events = night(4)
    KafkaEventPublisher(conn, topics).publish(events)
    journal = Journal(tmp_path / "journal.sqlite")
    with KafkaEventSource(conn, list(topics.values()), "crashy") as source:
        received = []
        deadline = time.monotonic() + 30
        while len(received) < 12 and time.monotonic() < deadline:
            received += source.receive(0.3)
        assert journal.accept([parse_event(m.raw) for m in received]) == [True] * 12
        # ... and the process dies here, before commit.
    with KafkaEventSource(conn, list(topics.values()), "crashy") as source:
        again = []
        deadline = time.monotonic() + 30
        while len(again) < 12 and time.monotonic() < deadline:
            batch = source.receive(0.3)
            again += batch
            assert [e for e in journal.accept([parse_event(m.raw) for m in batch]) if e] == []
            source.commit(batch)
    assert sorted(m.raw for m in again) == sorted(m.raw for m in received)
    assert journal.count(direction="in") == 12
    with KafkaEventSource(conn, list(topics.values()), "crashy") as source:
        assert take_batch(source, journal, None, timeout=1.0) == []


def test_invalid_messages_dead_lettered_and_committed(kafka_server, topics, tmp_path):
    conn = KafkaConnection(kafka_server.bootstrap)
    topic = topics[T.NEXT_VISIT]
    p = Producer({"bootstrap.servers": kafka_server.bootstrap})
    p.produce(topic, b"{not json", partition=0)
    bad_dec = Event.new(T.NEXT_VISIT, 5, {"mjd": 60218.0, "ra": 1.0, "dec": 95.0, "filter": "r"})
    p.produce(topic, bad_dec.to_json().encode(), partition=0)
    good = Event.new(T.NEXT_VISIT, 6, {"mjd": 60218.0, "ra": 1.0, "dec": 5.0, "filter": "r"})
    p.produce(topic, good.to_json().encode(), partition=0)
    assert p.flush(10) == 0
    journal = Journal(tmp_path / "journal.sqlite")
    dead = DeadLetters(tmp_path / "deadletter.jsonl")
    with KafkaEventSource(conn, [topic], "dl") as source:
        got = drain(source, journal, dead, want=1)
        assert [e.id for e in got] == [good.id]
        assert source.committed()[(topic, 0)] == 3
    dead.close()
    lines = [json.loads(x) for x in (tmp_path / "deadletter.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0]["source"] == f"kafka:{topic}/0@0"
    assert lines[1]["event_id"] == bad_dec.id and lines[1]["field"] == "body.dec"


def test_kill_9_loses_nothing(kafka_server, topics, tmp_path):
    """A consumer killed mid-stream, then restarted: every event journaled exactly once."""
    conn = KafkaConnection(kafka_server.bootstrap)
    events = night(70)  # 210 events
    KafkaEventPublisher(conn, topics).publish(events)
    journal_path = tmp_path / "journal.sqlite"
    cmd = [
        sys.executable,
        "-m",
        "tests.kafka_events_worker",
        kafka_server.bootstrap,
        "killed",
        str(journal_path),
        str(len(events)),
        *topics.values(),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if journal_path.exists() and _journaled(journal_path) >= 40:
                break
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    before = _journaled(journal_path)
    assert 40 <= before < len(events), "the kill came too late to test a resume"
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    journal = Journal(journal_path)
    assert journal.count(direction="in") == len(events)
    ids = {e.id for fov in range(1, 71) for e in journal.events_for(fov)}
    assert ids == {e.id for e in events}
    progress = [json.loads(line) for line in second.stdout.splitlines()]
    received, new = progress[-1]["received"], sum(p["new"] for p in progress)
    assert new == len(events) - before
    print(f"kill -9 after {before} journaled; on resume {received - new} redelivered duplicates")


def test_missing_topic_named(kafka_server):
    with pytest.raises(KafkaError, match=r"topic 'nope' .* does not exist"):
        KafkaEventSource(KafkaConnection(kafka_server.bootstrap), ["nope"], "g")


def test_missing_password_variable_named():
    conn = KafkaConnection(
        "127.0.0.1:1", "SASL_SSL", "SCRAM-SHA-512", "me", "NIGHTPIPE_TEST_NO_SUCH_VAR"
    )
    with pytest.raises(KafkaError, match="NIGHTPIPE_TEST_NO_SUCH_VAR"):
        conn.client_config()
    with pytest.raises(ValueError, match="security_protocol"):
        KafkaConnection("h:1", "TLS")


def test_security_settings_reach_the_client(monkeypatch):
    monkeypatch.setenv("NIGHTPIPE_TEST_KAFKA_PASSWORD", "s3cret")
    conn = KafkaConnection(
        "a:9094,b:9094",
        "sasl_ssl",
        "SCRAM-SHA-512",
        "broker-user",
        "NIGHTPIPE_TEST_KAFKA_PASSWORD",
        ssl_ca_location="/etc/ca.pem",
        extra={"client.id": "nightpipe"},
    )
    assert conn.client_config() == {
        "bootstrap.servers": "a:9094,b:9094",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "broker-user",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ca.pem",
        "client.id": "nightpipe",
    }


def test_publisher_refuses_unknown_type(kafka_server, topics):
    publisher = KafkaEventPublisher(KafkaConnection(kafka_server.bootstrap), topics)
    with pytest.raises(KafkaError, match=r"no topic for type 'association\.visit_done'"):
        publisher.publish([Event.new(T.VISIT_DONE, 1, {})])


def _journaled(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM events WHERE direction='in'").fetchone()[0]
        except sqlite3.OperationalError:
            return 0
