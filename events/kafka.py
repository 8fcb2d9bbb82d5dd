"""Events over Kafka: inbound events from topics, and a publisher that plays events into them.

Each message's value is one event envelope as JSON (`events.envelope.Event.to_json`),
the same bytes the ZeroMQ endpoint takes. `KafkaEventSource` hands the raw
messages to the caller and commits a partition's offset only when the caller
says the events up to it are journaled (`KafkaEventSource.commit`): after a
kill -9 the consumer resumes at the last committed offset, so no event is lost;
the few received again are dropped by the journal, which knows their ids.
`take_batch` is that loop for one batch: parse, journal, dead-letter, commit.

The source reads every partition of its topics itself (no consumer-group
rebalancing: a master wants all events), and keeps its position as the
committed offsets of its group id.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from events.deadletter import DeadLetters
from events.envelope import Event
from events.journal import Journal
from events.types import DIASOURCES_READY, NEXT_VISIT, PREDICTIONS_READY
from events.validate import MAX_BYTES, EventError, parse_event

DEFAULT_TOPICS: Mapping[str, str] = {
    NEXT_VISIT: "telescope.next_visit",
    DIASOURCES_READY: "detection.diasources_ready",
    PREDICTIONS_READY: "nightmops.predictions_ready",
}
"""The topic each inbound event type comes on, unless configured otherwise."""

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


class KafkaError(RuntimeError):
    """Kafka could not be used as configured (broker, topic, delivery or commit)."""


@dataclass(frozen=True)
class KafkaConnection:
    """Where the Kafka cluster is and how to log in; the rest is librdkafka's defaults.

    Parameters
    ----------
    bootstrap_servers : str
        ``host:port[,host:port...]``.
    security_protocol : str
        One of ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``.
    sasl_mechanism : str, optional
        E.g. ``SCRAM-SHA-512`` (Rubin's) or ``PLAIN``.
    sasl_username : str, optional
    sasl_password_env : str, optional
        Name of the environment variable holding the SASL password (never
        the password itself, so configs can be shared).
    ssl_ca_location : str, optional
        CA certificate file for ``SSL``/``SASL_SSL``.
    extra : mapping
        Any other librdkafka settings, applied last.
    """

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = None
    ssl_ca_location: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ValueError("bootstrap_servers must name at least one host:port")
        if self.security_protocol.upper() not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security_protocol must be one of {SECURITY_PROTOCOLS},"
                f" got {self.security_protocol!r}"
            )

    def client_config(self) -> dict[str, Any]:
        """The librdkafka settings of this connection."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol.upper(),
        }
        if self.sasl_mechanism:
            conf["sasl.mechanisms"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password_env:
            password = os.environ.get(self.sasl_password_env)
            if password is None:
                raise KafkaError(
                    f"environment variable {self.sasl_password_env} (the SASL password) is not set"
                )
            conf["sasl.password"] = password
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        conf.update(self.extra)
        return conf


@dataclass(frozen=True, slots=True)
class KafkaMessage:
    """One message as received: where it was, and its bytes."""

    topic: str
    partition: int
    offset: int
    raw: bytes
    key: bytes | None = None
    timestamp_ms: int | None = None

    @property
    def where(self) -> str:
        """``kafka:topic/partition@offset``, for logs and the dead-letter log."""
        return f"kafka:{self.topic}/{self.partition}@{self.offset}"


class KafkaEventSource:
    """Inbound events from Kafka topics, committed only once the caller has kept them.

    Parameters
    ----------
    connection : KafkaConnection
    topics : sequence of str
        Topics to read, every partition of each; they must exist.
    group_id : str
        Consumer group whose committed offsets are this source's position.
    start : {'earliest', 'latest'}
        Where to begin in a partition the group has no committed offset for.
    timeout : float
        Seconds to wait for the broker's metadata at start.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topics: Sequence[str],
        group_id: str,
        start: str = "earliest",
        timeout: float = 10.0,
    ) -> None:
        from confluent_kafka import Consumer, TopicPartition

        if start not in ("earliest", "latest"):
            raise ValueError(f"start must be 'earliest' or 'latest', got {start!r}")
        if not topics:
            raise ValueError("give at least one topic")
        conf = connection.client_config()
        conf.update(
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": start,
                "isolation.level": "read_committed",
            }
        )
        self._consumer = Consumer(conf)
        self._committed: dict[tuple[str, int], int] = {}
        try:
            meta = self._consumer.list_topics(timeout=timeout)
        except Exception as exc:
            self._consumer.close()
            raise KafkaError(f"no Kafka broker at {connection.bootstrap_servers}: {exc}") from exc
        parts = []
        for topic in topics:
            info = meta.topics.get(topic)
            if info is None or info.error is not None or not info.partitions:
                self._consumer.close()
                why = "does not exist" if info is None or not info.partitions else str(info.error)
                raise KafkaError(f"topic {topic!r} on {connection.bootstrap_servers} {why}")
            parts += [TopicPartition(topic, p) for p in sorted(info.partitions)]
        self.topics = tuple(topics)
        self.partitions = tuple((tp.topic, tp.partition) for tp in parts)
        # No offset given: each partition starts at the group's committed offset.
        self._consumer.assign(parts)

    def receive(self, timeout: float, max_batch: int = 1024) -> list[KafkaMessage]:
        """Wait up to `timeout` s for messages and take those already there (at most `max_batch`)."""
        from confluent_kafka import KafkaError as CKError

        out = []
        for m in self._consumer.consume(max_batch, max(0.0, timeout)):
            err = m.error()
            if err is not None:
                if err.code() == CKError._PARTITION_EOF or not err.fatal():
                    continue  # librdkafka retries transient errors itself
                raise KafkaError(f"Kafka consumer failed: {err}")
            ts_type, ts = m.timestamp()
            out.append(
                KafkaMessage(
                    topic=m.topic(),
                    partition=m.partition(),
                    offset=m.offset(),
                    raw=m.value() or b"",
                    key=m.key(),
                    timestamp_ms=ts if ts_type else None,
                )
            )
        return out

    def commit(self, messages: Iterable[KafkaMessage]) -> None:
        """Commit past `messages` (synchronously): call once they are journaled.

        Per partition the offset after the highest message is committed, and
        never moved back.
        """
        from confluent_kafka import KafkaException, TopicPartition

        nxt: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic, m.partition)
            nxt[key] = max(nxt.get(key, 0), m.offset + 1)
        todo = [
            TopicPartition(t, p, o)
            for (t, p), o in nxt.items()
            if o > self._committed.get((t, p), -1)
        ]
        if not todo:
            return
        try:
            done = self._consumer.commit(offsets=todo, asynchronous=False)
        except KafkaException as exc:
            raise KafkaError(f"could not commit offsets {_offsets(todo)}: {exc}") from exc
        failed = [tp for tp in done or () if tp.error is not None]
        if failed:
            raise KafkaError(f"could not commit offsets {_offsets(failed)}: {failed[0].error}")
        for tp in todo:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def committed(self, timeout: float = 10.0) -> dict[tuple[str, int], int]:
        """The group's committed offset of each partition (-1001 where none)."""
        from confluent_kafka import TopicPartition

        got = self._consumer.committed(
            [TopicPartition(t, p) for t, p in self.partitions], timeout=timeout
        )
        return {(tp.topic, tp.partition): tp.offset for tp in got}

    def close(self) -> None:
        """Leave the broker (nothing is committed here)."""
        self._consumer.close()

    def __enter__(self) -> KafkaEventSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def take_batch(
    source: KafkaEventSource,
    journal: Journal,
    dead: DeadLetters | None,
    timeout: float,
    max_batch: int = 1024,
    max_bytes: int = MAX_BYTES,
) -> list[Event]:
    """Receive a batch, journal the valid events, dead-letter the rest, then commit.

    Returns
    -------
    list of Event
        The events new to the journal, in arrival order; one whose id was
        journaled before (a redelivery after a restart) is not returned.
    """
    messages = source.receive(timeout, max_batch)
    if not messages:
        return []
    events: list[Event] = []
    for m in messages:
        try:
            events.append(parse_event(m.raw, max_bytes))
        except EventError as exc:
            if dead is not None:
                dead.write(m.raw, exc, m.where)
    new = journal.accept(events)
    source.commit(messages)
    return [e for e, fresh in zip(events, new, strict=True) if fresh]


class KafkaEventPublisher:
    """Plays events into their topics (one message each, key = fov_id), acknowledged.

    Parameters
    ----------
    connection : KafkaConnection
    topics : mapping of str to str
        Topic of each event type; an event of another type is refused.
    """

    def __init__(
        self, connection: KafkaConnection, topics: Mapping[str, str] = DEFAULT_TOPICS
    ) -> None:
        from confluent_kafka import Producer

        conf = connection.client_config()
        conf.setdefault("acks", "all")
        conf.setdefault("enable.idempotence", True)
        self._producer = Producer(conf)
        self.topics = dict(topics)

    def publish(self, events: Iterable[Event], timeout: float = 30.0) -> int:
        """Send events and return when the broker has acknowledged all; return how many."""
        errors: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"{msg.topic()}: {err}")

        n = 0
        for event in events:
            topic = self.topics.get(event.type)
            if topic is None:
                raise KafkaError(f"event {event.id!r}: no topic for type {event.type!r}")
            key = None if event.fov_id is None else str(event.fov_id).encode()
            produce_waiting(self._producer, topic, event.to_json().encode(), key, None, delivered)
            n += 1
        left = self._producer.flush(timeout)
        if left:
            raise KafkaError(f"{left} of {n} events not acknowledged within {timeout:g} s")
        if errors:
            raise KafkaError(f"{len(errors)} of {n} events not delivered: {errors[0]}")
        return n

    def close(self, timeout: float = 30.0) -> None:
        """Deliver anything still queued."""
        self._producer.flush(timeout)


def create_topics(
    connection: KafkaConnection, topics: Iterable[str], partitions: int = 1, timeout: float = 10.0
) -> None:
    """Create topics that do not exist yet (``partitions`` each)."""
    from confluent_kafka import KafkaError as CKError
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(connection.client_config())
    existing = admin.list_topics(timeout=timeout).topics
    wanted = [NewTopic(t, num_partitions=partitions) for t in topics if t not in existing]
    if not wanted:
        return
    for topic, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != CKError.TOPIC_ALREADY_EXISTS:
                raise KafkaError(f"could not create topic {topic!r}: {exc}") from exc


def topic_messages(connection: KafkaConnection, topic: str, timeout: float = 60.0) -> Iterator[Any]:
    """Every message of a topic (confluent-kafka Messages), each partition read to its end.

    The end is where a fetch reports it (partition EOF), not what ListOffsets
    says (Tansu answers the last batch's first offset there). No offset is
    committed.

    Raises
    ------
    KafkaError
        If the topic does not exist, or is not read to its end within
        `timeout` seconds without a message.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from confluent_kafka import KafkaError as CKError

    conf = connection.client_config()
    conf.update(
        {
            "group.id": f"nightpipe-read-{time.time_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer = Consumer(conf)
    try:
        info = consumer.list_topics(timeout=10).topics.get(topic)
        if info is None or not info.partitions:
            raise KafkaError(f"topic {topic!r} on {connection.bootstrap_servers} does not exist")
        parts = sorted(info.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        at_end: set[int] = set()
        last = time.monotonic()
        while len(at_end) < len(parts):
            if time.monotonic() - last > timeout:
                raise KafkaError(f"{topic}: not read to its end ({timeout:g} s without a message)")
            for m in consumer.consume(1000, 0.2):
                err = m.error()
                if err is None:
                    last = time.monotonic()
                    at_end.discard(m.partition())
                    yield m
                elif err.code() == CKError._PARTITION_EOF:
                    at_end.add(m.partition())
                elif err.fatal():
                    raise KafkaError(f"Kafka consumer failed: {err}")
    finally:
        consumer.close()


def produce_waiting(
    producer: Any, topic: str, value: bytes, key: bytes | None, headers, callback
) -> None:
    """Queue one message, waiting for room in the producer's queue."""
    while True:
        try:
            producer.produce(topic, value, key, headers=headers, on_delivery=callback)
            return
        except BufferError:
            producer.poll(0.05)


def _offsets(parts: Iterable[Any]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}@{tp.offset}" for tp in parts)
