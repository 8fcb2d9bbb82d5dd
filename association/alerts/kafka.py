"""The alert stream: a visit's alerts as Kafka messages, acknowledged before the visit is done.

One message per alert, as community brokers read Rubin's stream:

- value: the Confluent wire header (schema id) and the schemaless Avro record;
- key: the ``diaSourceId`` as an 8-byte big-endian signed integer (Kafka's
  ``LongSerializer``; Rubin's own producer sends no key), so a consumer can
  drop the duplicates a resumed visit may send;
- header ``producer_timestamp``: milliseconds since the Unix epoch as decimal
  text, as Rubin's producer writes it.

A visit's messages are queued in one go and flushed once.
`AlertProducer.publish_visit` returns only when the broker has acknowledged
every one (``acks=all``), and raises `AlertDeliveryError` otherwise. Delivery is
at-least-once: a visit published again after a failure or a kill -9 sends its
alerts again with the same keys; none is lost.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from association.alerts.rubin import EncodedAlerts
from events.kafka import KafkaConnection, KafkaError, produce_waiting

TIMESTAMP_HEADER = "producer_timestamp"


PERMANENT_ERRORS = frozenset(
    {
        "MSG_SIZE_TOO_LARGE",
        "RECORD_LIST_TOO_LARGE",
        "INVALID_MSG",
        "INVALID_RECORD",
        "INVALID_REQUIRED_ACKS",
        "TOPIC_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "_INVALID_ARG",
        "_FATAL",
    }
)
"""librdkafka errors that sending again cannot cure; any other failure is passing."""


class AlertDeliveryError(KafkaError):
    """Some alerts of a visit were not acknowledged by the broker.

    ``passing`` is True when sending the visit again may succeed: the broker
    down or slow, a leader moving, a timeout. It is False for an alert the
    broker refuses as such (too large, not authorised).
    """

    def __init__(self, message: str, passing: bool = True) -> None:
        super().__init__(message)
        self.passing = passing


def delivery_passing(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is an `AlertDeliveryError` worth retrying."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, AlertDeliveryError):
            return e.passing
        e = e.__cause__ or e.__context__
    return False


def _permanent(err: Any) -> bool:
    """Whether a librdkafka error (a KafkaError of confluent-kafka) is permanent."""
    from confluent_kafka import KafkaError as CKError

    if err.fatal():
        return True
    return any(err.code() == getattr(CKError, name, None) for name in PERMANENT_ERRORS)


@dataclass(frozen=True)
class AlertStreamConfig:
    """Where the alerts go, and how hard to try.

    Parameters
    ----------
    connection : KafkaConnection
        Brokers and security settings.
    topic : str
        The alert topic.
    delivery_timeout_s : float
        How long a visit may wait for the broker's acknowledgements.
    linger_ms : float
        How long librdkafka lets a batch fill before sending it.
    compression : str
        ``none``, ``gzip``, ``snappy``, ``lz4`` or ``zstd``.
    idempotent : bool
        librdkafka's idempotent producer: no duplicates or reordering from its
        own retries. Not needed for at-least-once (duplicates carry the same
        key); off by default, as it made acknowledgement several times slower
        on the test broker.
    producer : mapping
        Other librdkafka producer settings, applied last.
    """

    connection: KafkaConnection
    topic: str = "alerts"
    delivery_timeout_s: float = 30.0
    linger_ms: float = 5.0
    compression: str = "none"
    idempotent: bool = False
    producer: Mapping[str, Any] = field(default_factory=dict)

    def producer_config(self) -> dict[str, Any]:
        """The librdkafka settings of the producer."""
        conf = self.connection.client_config()
        conf.update(
            {
                "acks": "all",
                "enable.idempotence": self.idempotent,
                "linger.ms": self.linger_ms,
                "compression.type": self.compression,
                "message.timeout.ms": int(self.delivery_timeout_s * 1000),
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 2_097_151,
            }
        )
        conf.update(self.producer)
        return conf


@dataclass(frozen=True)
class PublishedVisit:
    """Where a visit's alerts landed.

    Attributes
    ----------
    topic : str
    n_alerts : int
    offsets : dict of int to (int, int)
        Per partition, the first and last offset of the visit's alerts.
    seconds : float
        From the first produce to the last acknowledgement.
    """

    topic: str
    n_alerts: int
    offsets: dict[int, tuple[int, int]]
    seconds: float

    def event_fields(self) -> dict[str, Any]:
        """The fields ``association.alerts_ready`` carries about the stream."""
        return {
            "topic": self.topic,
            "offsets": {str(p): [a, b] for p, (a, b) in sorted(self.offsets.items())},
        }


def alert_key(dia_source_id: int) -> bytes:
    """The message key of an alert."""
    return int(dia_source_id).to_bytes(8, "big", signed=True)


def key_id(key: bytes | None) -> int | None:
    """The diaSourceId a message key stands for (None for a missing or foreign key)."""
    if key is None or len(key) != 8:
        return None
    return int.from_bytes(key, "big", signed=True)


class AlertProducer:
    """Publishes visits' alerts to one topic.

    Parameters
    ----------
    config : AlertStreamConfig
    """

    def __init__(self, config: AlertStreamConfig) -> None:
        from confluent_kafka import Producer

        self.config = config
        self._producer = Producer(config.producer_config())
        # Connect now, and refuse a topic that is not there rather than time out later.
        try:
            meta = self._producer.list_topics(timeout=config.delivery_timeout_s)
        except Exception as exc:
            raise KafkaError(
                f"no Kafka broker at {config.connection.bootstrap_servers}: {exc}"
            ) from exc
        info = meta.topics.get(config.topic)
        if info is None or info.error is not None or not info.partitions:
            why = "does not exist" if info is None or not info.partitions else str(info.error)
            raise KafkaError(
                f"alert topic {config.topic!r} on {config.connection.bootstrap_servers} {why}"
            )

    def publish_visit(self, alerts: EncodedAlerts, visit: int | None = None) -> PublishedVisit:
        """Send a visit's alerts and wait until the broker has acknowledged all of them.

        Parameters
        ----------
        alerts : EncodedAlerts
            Framed alerts (`RubinAlertEncoder.encode` with ``framed=True``).
        visit : int, optional
            Named in errors.

        Raises
        ------
        AlertDeliveryError
            If any alert was refused, or not acknowledged within
            ``delivery_timeout_s``; the visit must then be published again.
        """
        from confluent_kafka import KafkaException

        if not alerts.framed:
            raise ValueError("alerts for Kafka need the Confluent header (encode with framed=True)")
        what = "alerts" if visit is None else f"visit {visit}"
        topic = self.config.topic
        n = len(alerts)
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        failed: list[tuple[bytes | None, str]] = []
        acked = 0

        def delivered(err: Any, msg: Any) -> None:
            nonlocal acked
            if err is not None:
                failed.append((msg.key(), err))
                return
            acked += 1
            p, o = msg.partition(), msg.offset()
            if o < first.get(p, o + 1):
                first[p] = o
            if o > last.get(p, -1):
                last[p] = o

        raw_keys = np.ascontiguousarray(alerts.ids, ">i8").tobytes()
        keys = [raw_keys[i : i + 8] for i in range(0, len(raw_keys), 8)]
        values = alerts.messages()
        producer = self._producer
        produce, now = producer.produce, time.time
        start = time.perf_counter()
        for i, (value, key) in enumerate(zip(values, keys, strict=True)):
            headers = [(TIMESTAMP_HEADER, str(now() * 1000).encode())]
            try:
                try:
                    produce(topic, value, key, headers=headers, on_delivery=delivered)
                except BufferError:  # the queue is full: wait for room
                    produce_waiting(producer, topic, value, key, headers, delivered)
            except KafkaException as exc:
                raise AlertDeliveryError(
                    f"{what}: alert diaSourceId {int(alerts.ids[i])} ({len(value)} bytes)"
                    f" refused by the producer: {exc}",
                    passing=not _permanent(exc.args[0]),
                ) from exc
        producer.flush(self.config.delivery_timeout_s)
        seconds = time.perf_counter() - start
        if failed:
            key, err = failed[0]
            raise AlertDeliveryError(
                f"{what}: {len(failed)} of {n} alerts refused by topic {topic!r}"
                f" (first: diaSourceId {key_id(key)}: {err})",
                passing=not any(_permanent(e) for _, e in failed),
            )
        if acked != n:
            raise AlertDeliveryError(
                f"{what}: {n - acked} of {n} alerts not acknowledged by topic {topic!r}"
                f" within {self.config.delivery_timeout_s:g} s"
            )
        offsets = {p: (first[p], last[p]) for p in sorted(first)}
        return PublishedVisit(topic, n, offsets, seconds)

    def close(self) -> None:
        """Deliver whatever is still queued (a failed visit's leftovers)."""
        self._producer.flush(self.config.delivery_timeout_s)
