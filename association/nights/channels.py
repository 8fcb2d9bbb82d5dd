"""How a replay sends a night's events: to the pipeline's ZeroMQ endpoint, or into Kafka topics.

With Kafka (`KafkaNight`), the events go into one topic per inbound type
(`events.kafka.DEFAULT_TOPICS`, after a prefix), each of one partition so that
every type's events keep the night's order; the pipeline the replay starts
reads them as a consumer group of the run directory's own, and streams its
alerts to the prefixed ``alerts`` topic.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from events.client import Injector
from events.envelope import Event
from events.kafka import DEFAULT_TOPICS, KafkaConnection, KafkaEventPublisher, create_topics

ALERT_TOPIC = "alerts"
"""The alert topic's name, after the prefix."""

ALERT_PARTITIONS = 3
"""Partitions of an alert topic the replay creates (alerts are keyed by diaSourceId)."""


class Channel(Protocol):
    """Sends events to a pipeline; a context manager."""

    def send(self, events: Sequence[Event]) -> list[dict[str, Any]]:
        """Send events, in order; the ones refused, ``{"id", "error"}`` each."""
        ...

    def __enter__(self) -> Channel: ...

    def __exit__(self, *exc: object) -> None: ...


class ZmqChannel:
    """Events to the endpoint, each answered: refused ones come back with their reason."""

    def __init__(self, address: str) -> None:
        self._injector = Injector(address, timeout=30)

    def send(self, events: Sequence[Event]) -> list[dict[str, Any]]:
        refused = []
        for ev in events:
            reply = self._injector.send(ev)
            if not reply.get("ok"):
                refused.append({"id": ev.id, "error": reply.get("error")})
        return refused

    def __enter__(self) -> ZmqChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self._injector.close()


class KafkaChannel:
    """Events into their topics, returned once the broker has acknowledged them.

    Nothing comes back: the pipeline dead-letters an invalid event itself.
    """

    def __init__(self, connection: KafkaConnection, topics: dict[str, str]) -> None:
        self._publisher = KafkaEventPublisher(connection, topics)

    def send(self, events: Sequence[Event]) -> list[dict[str, Any]]:
        self._publisher.publish(events)
        return []

    def __enter__(self) -> KafkaChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self._publisher.close()


@dataclass(frozen=True)
class KafkaNight:
    """The Kafka side of a replay: topics, the pipeline's consumer group, its settings.

    Parameters
    ----------
    bootstrap : str
        Kafka bootstrap servers.
    prefix : str
        Put before every topic name (``night1.`` gives ``night1.alerts``): one
        night's topics apart from another's on a broker that keeps them.
    run_dir : Path
        The run directory; the consumer group is named after it, so a resumed
        replay's pipeline carries on from the offsets the killed one committed.
    """

    bootstrap: str
    prefix: str
    run_dir: Path

    @property
    def connection(self) -> KafkaConnection:
        """Where the broker is."""
        return KafkaConnection(self.bootstrap)

    @property
    def event_topics(self) -> dict[str, str]:
        """The topic of each inbound event type."""
        return {etype: self.prefix + name for etype, name in DEFAULT_TOPICS.items()}

    @property
    def alert_topic(self) -> str:
        """The topic the pipeline streams its alerts to."""
        return self.prefix + ALERT_TOPIC

    @property
    def group_id(self) -> str:
        """The pipeline's consumer group: one per run directory."""
        digest = hashlib.sha1(str(Path(self.run_dir).resolve()).encode()).hexdigest()[:12]
        return f"nightpipe-replay-{digest}"

    def create_topics(self) -> None:
        """Create the topics that do not exist yet."""
        create_topics(self.connection, self.event_topics.values(), partitions=1)
        create_topics(self.connection, [self.alert_topic], partitions=ALERT_PARTITIONS)

    def pipeline_sets(self) -> list[str]:
        """``--set`` options that make ``nightpipe run`` read the topics and stream alerts."""
        values = {
            "runtime.kafka_bootstrap": self.bootstrap,
            "runtime.kafka_topics": list(self.event_topics.values()),
            "runtime.kafka_group_id": self.group_id,
            "store.kafka_bootstrap": self.bootstrap,
            "store.kafka_topic": self.alert_topic,
        }
        return [f"{key}={json.dumps(value)}" for key, value in values.items()]

    def describe(self) -> dict[str, Any]:
        """What replay.json records of it."""
        return {
            "bootstrap": self.bootstrap,
            "event_topics": self.event_topics,
            "alert_topic": self.alert_topic,
            "group_id": self.group_id,
        }

    def channel(self) -> KafkaChannel:
        """A channel into the event topics."""
        return KafkaChannel(self.connection, self.event_topics)
