"""Nights through Kafka under mpiexec with a real broker: events in from topics, alerts out to one.

- Events from Kafka drive the pole night to the same database as over ZeroMQ.
- A Kafka replay killed with kill -9 while a visit's alerts are on the topic
  but its commit waits (the test holds the database's write lock), then
  resumed: no alert is missing on the topic; the re-sent duplicates are
  counted and reported; every alert,
  on the topic and in the files, is valid under the package's latest schema;
  the topic without duplicates equals the database's ``alerts`` table.
- ``nightpipe demo --kafka``: the bundled broker, the stream shown by the consumer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import fastavro
import pytest
from fastavro.validation import validate

from association.alerts.consumer import decode_alert, topic_keys
from association.alerts.kafka import key_id
from association.alerts.rubin_schema import latest_version, load_alert_schema, schema_id
from association.nights.channels import KafkaNight
from events.journal import Journal
from events.kafka import KafkaConnection, KafkaEventSource
from framework.mpiexec import BIN
from tests.nights import db_rows, make_archive, replay

pytestmark = pytest.mark.mpi


def _prefix() -> str:
    return f"n{uuid.uuid4().hex[:8]}."


def test_events_from_kafka_drive_the_night_as_zeromq_does(
    kafka_server, pole_archive, pole_reference, tmp_path
):
    run = tmp_path / "run"
    prefix = _prefix()
    # events in from Kafka; alerts as in the reference (files only), so the databases compare
    summary = replay(
        pole_archive,
        run,
        kafka=kafka_server.bootstrap,
        kafka_prefix=prefix,
        sets=['store.kafka_bootstrap=""'],
    )
    assert summary["failed"] == 0 and summary["done"] == summary["visits"]
    assert db_rows(run) == db_rows(pole_reference)
    night = KafkaNight(kafka_server.bootstrap, prefix, run)
    with Journal(run / "journal.sqlite") as j:
        inbound = Counter(e.event.type for e in j.entries(direction="in"))
    assert inbound == {
        "telescope.next_visit": 18,
        "detection.diasources_ready": 18,
        "nightmops.predictions_ready": 18,
        "control.shutdown": 1,  # over the endpoint
    }
    # they came from the topics: the pipeline's group committed past every one of them
    with KafkaEventSource(night.connection, list(night.event_topics.values()), night.group_id) as s:
        committed = s.committed()
    assert {t: o for (t, _), o in committed.items()} == {t: 18 for t in night.event_topics.values()}
    assert not (run / "deadletter.jsonl").read_text()


def test_kill9_during_kafka_replay_then_resume(kafka_server, tmp_path):
    """kill -9 while a visit's alerts are on the topic but not yet in the database; resumed."""
    archive = make_archive(tmp_path / "archive", max_visits=8)
    run = tmp_path / "run"
    prefix = _prefix()
    topic = f"{prefix}alerts"
    cmd = [
        str(BIN / "nightpipe"),
        "replay",
        str(archive),
        "--run-dir",
        str(run),
        "--kafka",
        kafka_server.bootstrap,
        "--kafka-prefix",
        prefix,
        "--set",
        'store.file_format="rubin"',
    ]
    times = [json.loads(x)["time"] for x in (archive / "events.jsonl").read_text().splitlines()]
    speed = (max(times) - min(times)) / 16.0  # the 8 visits over about 16 s
    with (tmp_path / "replay.out").open("wb") as out:
        proc = subprocess.Popen([*cmd, "--speed", str(speed)], stdout=out, stderr=subprocess.STDOUT)
        _wait(lambda: _outcomes(run) >= 2, proc)
        # Hold the database's write lock: the next visits' alerts go out, their commits wait.
        lock = sqlite3.connect(run / "nightpipe.sqlite", timeout=60)
        lock.execute("BEGIN IMMEDIATE")
        in_db = lock.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
        connection = KafkaConnection(kafka_server.bootstrap)
        _wait(lambda: len(topic_keys(connection, topic)) > in_db, proc)
        time.sleep(1.0)  # the rest of the visit's alerts
        os.kill(json.loads((run / "endpoint.json").read_text())["pid"], signal.SIGKILL)
        assert proc.wait(60) != 0  # the replay sees its pipeline die
        ahead = len(topic_keys(connection, topic)) - in_db
        lock.rollback()
        lock.close()
    done = _outcomes(run)
    assert 2 <= done < 8 and ahead > 0
    gate = ["--check", "--min-completeness", "0", "--min-purity", "0", "--min-mover-recovery", "0"]
    again = subprocess.run(
        [*cmd, "--speed", "max", *gate], capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]

    rows = db_rows(run)
    stored = sorted(r[0] for r in rows["alerts"])
    night_sources = sorted(r[0] for r in rows["diasources"] if r[1] != -1)
    assert stored == night_sources  # under Rubin's schema every DIASource alerts
    latest = load_alert_schema()
    messages = kafka_server.messages(topic)
    keys, last = [], {}
    for m in messages:  # every alert on the topic, duplicates too, valid under the schema
        sid, record = decode_alert(m.value())
        assert sid == schema_id(latest_version())
        assert validate(record, latest, raise_errors=True)
        assert key_id(m.key()) == record["diaSourceId"]
        keys.append(record["diaSourceId"])
        last[record["diaSourceId"]] = record
    duplicates = len(keys) - len(set(keys))
    print(
        f"kill -9 after {done} visits with {ahead} alerts sent but not stored; resumed: "
        f"{len(keys)} alerts on the topic, {duplicates} duplicates"
    )
    assert duplicates >= ahead  # the killed visits' alerts went again, with the same keys
    assert sorted(set(keys)) == stored  # none missing, none foreign
    reported = re.search(r"(\d+) messages, (\d+) alerts \((\d+) duplicates\)", again.stdout)
    assert reported is not None, again.stdout[-3000:]
    assert tuple(map(int, reported.groups())) == (len(keys), len(set(keys)), duplicates)
    # the files hold the same alerts as the topic (its last copy of each), so valid too
    in_files = {}
    for path in sorted((run / "alerts").glob("visit_*.avro")):
        with path.open("rb") as fo:
            reader = fastavro.reader(fo)
            assert reader.writer_schema["name"] == latest["name"]
            in_files.update((r["diaSourceId"], r) for r in reader)
    assert sorted(in_files) == stored
    assert all(_same(in_files[sid], last[sid]) for sid in stored)
    # moving-object matches alert with an ssSource from their prediction, and no diaObject
    movers = {r[2] for r in rows["moving_matches"]}
    assert movers
    for sid in stored:
        assert (last[sid]["ssSource"] is not None) == (sid in movers)
        assert (last[sid]["diaObject"] is None) == (sid in movers)
    with Journal(run / "journal.sqlite") as j:
        ready = [e.event.body for e in j.entries(type="association.alerts_ready")]
        outcomes = j.outcomes()
    assert set(outcomes.values()) == {"done"} and len(outcomes) == 8
    assert all(b["topic"] == topic and b["offsets"] for b in ready)


def test_demo_with_kafka(tmp_path):
    out = subprocess.run(
        [str(BIN / "nightpipe"), "demo", "--kafka", "--visits", "2", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "Kafka-compatible broker (Tansu, memory only) on 127.0.0.1:" in text
    lines = [x for x in text.splitlines() if re.match(r"\d+:\d+ schema=11\.1 diaSourceId=", x)]
    assert len(lines) == 8
    summary = re.search(
        r"\.\.\. (\d+) alerts under schema\(s\) (\{.*?\}): .* (\d+) duplicates", text
    )
    assert summary is not None, text
    n = int(summary.group(1))
    assert n > 0 and json.loads(summary.group(2).replace("'", '"')) == {"11.1": n}
    assert f"{n} messages, {n} alerts (0 duplicates); database: {n} alerts" in text


def _outcomes(run: Path) -> int:
    if not (run / "journal.sqlite").exists():
        return 0
    with Journal(run / "journal.sqlite") as j:
        return len(j.outcomes())


def _wait(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the replay ended with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _same(a: dict, b: dict) -> bool:
    """Equal records, NaN equal to NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
