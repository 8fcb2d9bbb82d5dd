"""The master takes events from Kafka topics beside its endpoint (in one process, a real broker).

Each event is journaled before its offset is committed; a duplicate id is
dropped by the journal, an invalid message goes to the dead-letter log, and
a restarted master carries on from the committed offsets without acting on
anything twice.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

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
)
from events.types import INBOUND
from framework.config import load_config
from framework.intake import Intake, configured_sources
from framework.runner import InProcessPipeline
from tests.pipelines.trace_stages import config_text

NV, DET, PRED = DEFAULT_TOPICS
VISIT = {"mjd": 60218.0, "ra": 10.0, "dec": -20.0, "filter": "r"}
STAGES = [
    {"name": "a"},
    {"name": "b", "wait": {"event": DET, "timeout": 30, "policy": "fail"}},
    {"name": "c", "wait": {"event": PRED, "timeout": 30, "policy": "fail"}},
]


@pytest.fixture
def topics(kafka_server) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    names = {t: f"{tag}.{name}" for t, name in DEFAULT_TOPICS.items()}
    create_topics(KafkaConnection(kafka_server.bootstrap), names.values(), partitions=2)
    return names


def night(fovs) -> list[Event]:
    out = []
    for fov in fovs:
        out += [
            Event.new(NV, fov, VISIT, source="test"),
            Event.new(DET, fov, {"paths": ["x"]}, source="test"),
            Event.new(PRED, fov, {"paths": []}, source="test"),
        ]
    return out


def pipeline(tmp_path: Path, bootstrap: str, topics: dict[str, str]) -> InProcessPipeline:
    cfg = tmp_path / "p.toml"
    cfg.write_text(config_text(STAGES))
    runtime = {
        "kafka_bootstrap": bootstrap,
        "kafka_topics": list(topics.values()),
        "kafka_group_id": f"master-{tmp_path.name}",
    }
    config = load_config(cfg, {"runtime": runtime})
    return InProcessPipeline(config, tmp_path / "run", 2).start()


def wait_outcomes(run_dir: Path, fovs, timeout: float = 60.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Journal(run_dir / "journal.sqlite") as j:
            got = j.outcomes()
        if all(f in got for f in fovs):
            return got
        time.sleep(0.05)
    raise TimeoutError(f"outcomes {got} lack some of {fovs}")


def stop(pipe: InProcessPipeline) -> int:
    pipe.master.submit([Event.new("control.shutdown", None, {}, source="test")])
    return pipe.join(60)


def test_kafka_events_drive_executions_once(kafka_server, topics, tmp_path):
    conn = KafkaConnection(kafka_server.bootstrap)
    events = night([1, 2, 3])
    publisher = KafkaEventPublisher(conn, topics)
    publisher.publish(events[:3])  # fov 1 before the pipeline is up: kept by the broker
    pipe = pipeline(tmp_path, kafka_server.bootstrap, topics)
    run = tmp_path / "run"
    publisher.publish(events[3:])
    publisher.publish([events[4]])  # fov 2's detections again: the same id
    raw = Producer({"bootstrap.servers": kafka_server.bootstrap})
    raw.produce(topics[NV], b"{not json", partition=1)
    bad = Event.new(NV, 7, {**VISIT, "dec": 95.0}, source="test")
    raw.produce(topics[NV], bad.to_json().encode(), partition=1)
    outbound = Event.new("trace.execution_done", 8, {"timings": {}}, source="test")
    raw.produce(topics[DET], outbound.to_json().encode(), partition=0)
    assert raw.flush(10) == 0
    assert wait_outcomes(run, [1, 2, 3]) == {1: "done", 2: "done", 3: "done"}
    deadline = time.monotonic() + 20
    while pipe.master.intake.counts.rejected < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    counts = pipe.master.intake.counts
    assert (counts.accepted, counts.duplicates, counts.rejected) == (9, 1, 3)
    assert stop(pipe) == 0
    with Journal(run / "journal.sqlite") as j:
        inbound = [e.event for e in j.entries(direction="in") if e.event.type != "control.shutdown"]
    assert sorted(e.id for e in inbound) == sorted(e.id for e in events)  # each once
    dead = [json.loads(x) for x in (run / "deadletter.jsonl").read_text().splitlines()]
    assert sorted(d["event_id"] or "" for d in dead) == sorted(["", bad.id, outbound.id])
    assert {d["source"].split("/")[0] for d in dead} == {
        f"kafka:{topics[NV]}",
        f"kafka:{topics[DET]}",
    }
    assert next(d for d in dead if d["event_id"] == bad.id)["field"] == "body.dec"
    # every message committed once journaled: the group's offsets are at the topics' ends
    with KafkaEventSource(conn, list(topics.values()), f"master-{tmp_path.name}") as source:
        committed = source.committed()
    ends = {}
    for name in topics.values():
        for m in kafka_server.messages(name):
            ends[(name, m.partition())] = m.offset() + 1
    assert committed == {k: ends.get(k, -1001) for k in committed}
    # A restarted master resumes after the committed offsets: nothing is acted on again.
    publisher.publish(night([4]))
    again = pipeline(tmp_path, kafka_server.bootstrap, topics)
    assert wait_outcomes(run, [4])[4] == "done"
    assert stop(again) == 0
    publisher.close()
    with Journal(run / "journal.sqlite") as j:
        assert j.count(direction="in", type=NV) == 4
        assert len(j.outcomes()) == 4
        outs = [e.event for e in j.entries(direction="out") if e.event.type.startswith("trace.")]
    assert sorted(e.fov_id for e in outs) == [1, 2, 3, 4]


def test_draining_intake_leaves_kafka_events_for_the_next_run(kafka_server, topics, tmp_path):
    conn = KafkaConnection(kafka_server.bootstrap)
    group = f"drain-{tmp_path.name}"
    (source,) = configured_sources(
        load_config(
            _write(tmp_path),
            {
                "runtime": {
                    "kafka_bootstrap": kafka_server.bootstrap,
                    "kafka_topics": list(topics.values()),
                    "kafka_group_id": group,
                }
            },
        ).runtime,
        "trace",
    )
    journal = Journal(tmp_path / "journal.sqlite")
    dead = DeadLetters(tmp_path / "deadletter.jsonl")
    log = logging.getLogger("test.intake")
    intake = Intake(journal, dead, INBOUND, NV, None, 65536, log, None, [source])
    KafkaEventPublisher(conn, topics).publish(night([5]))
    assert sum(len(kafka_server.messages(t)) for t in topics.values()) == 3  # there to read
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert intake.poll(0.0, draining=True) == []  # draining: not even read
        time.sleep(0.1)
    assert journal.count(direction="in") == 0
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 3 and time.monotonic() < deadline:
        got += intake.poll(0.0, draining=False)
        time.sleep(0.05)
    assert sorted(e.type for e, _ in got) == sorted([NV, DET, PRED])
    assert [seq for _, seq in got] == sorted(seq for _, seq in got)
    intake.close()
    with KafkaEventSource(conn, list(topics.values()), group) as again:
        assert again.receive(1.0) == []  # committed


def test_missing_topic_stops_the_start(kafka_server, tmp_path):
    cfg = load_config(
        _write(tmp_path),
        {"runtime": {"kafka_bootstrap": kafka_server.bootstrap, "kafka_topics": ["nope"]}},
    )
    with pytest.raises(KafkaError, match=r"topic 'nope' on 127\.0\.0\.1:\d+ does not exist"):
        InProcessPipeline(cfg, tmp_path / "run", 1)


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(config_text(STAGES))
    return path
