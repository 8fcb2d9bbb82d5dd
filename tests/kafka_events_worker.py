"""A consumer process for the kill -9 test: journals events from Kafka until it has them all.

    python -m tests.kafka_events_worker BOOTSTRAP GROUP JOURNAL EXPECTED TOPIC...

Prints one JSON line per batch: messages received, events new to the journal.
"""

from __future__ import annotations

import json
import sys
import time

from events.journal import Journal
from events.kafka import KafkaConnection, KafkaEventSource, take_batch


def main(argv: list[str]) -> int:
    bootstrap, group, journal_path, expected, *topics = argv
    journal = Journal(journal_path)
    received = 0

    class Counting(KafkaEventSource):
        def receive(self, timeout: float, max_batch: int = 1024):
            nonlocal received
            got = super().receive(timeout, max_batch)
            received += len(got)
            return got

    with Counting(KafkaConnection(bootstrap), topics, group) as source:
        deadline = time.monotonic() + 60
        while journal.count(direction="in") < int(expected) and time.monotonic() < deadline:
            new = take_batch(source, journal, None, timeout=0.2, max_batch=7)
            print(json.dumps({"received": received, "new": len(new)}), flush=True)
            time.sleep(0.01)
    return 0 if journal.count(direction="in") == int(expected) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
