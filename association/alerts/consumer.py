"""Reading an alert stream as a community broker does: decode each message by its schema id.

A message is the Confluent wire header (magic byte 0, schema id) and a
schemaless Avro record; the id names the Rubin schema version
(``MAJOR * 100 + MINOR``), loaded from lsst-alert-packet.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fastavro
import numpy as np

from association.alerts.kafka import TIMESTAMP_HEADER, key_id
from association.alerts.rubin_schema import load_alert_schema, version_of_id
from association.alerts.wire import unframe
from events.kafka import KafkaConnection, KafkaError, topic_messages


def decode_alert(message: bytes) -> tuple[int, dict[str, Any]]:
    """The schema id and the alert record of one message."""
    sid, payload = unframe(message)
    schema = load_alert_schema(version_of_id(sid))
    return sid, fastavro.schemaless_reader(io.BytesIO(payload), schema, None)


@dataclass(frozen=True)
class StreamAlert:
    """One message of the stream, decoded (``record`` None and ``error`` set if it could not be)."""

    partition: int
    offset: int
    key: int | None
    schema_id: int | None
    record: dict[str, Any] | None
    producer_timestamp_ms: float | None = None
    error: str | None = None


def alert_line(a: StreamAlert) -> str:
    """One line per alert: where it is, its ids, position, band and flux."""
    where = f"{a.partition}:{a.offset}"
    if a.record is None:
        return f"{where} undecodable: {a.error}"
    src = a.record["diaSource"]
    obj = a.record.get("diaObject")
    ss = a.record.get("ssSource")
    prv = a.record.get("prvDiaSources") or []
    parts = [
        where,
        f"schema={version_of_id(a.schema_id)}",
        f"diaSourceId={a.record['diaSourceId']}",
        f"ra={src['ra']:.6f}",
        f"dec={src['dec']:+.6f}",
        f"band={src.get('band')}",
        f"psfFlux={_num(src.get('psfFlux'))}",
        f"snr={_num(src.get('snr'))}",
    ]
    if obj is not None:
        parts += [f"diaObjectId={obj['diaObjectId']}", f"nDiaSources={obj['nDiaSources']}"]
    if ss is not None:
        parts += [f"ssObjectId={ss['ssObjectId']}", f"ephOffset={_num(ss.get('ephOffset'))}"]
    parts.append(f"prv={len(prv)}")
    return " ".join(parts)


@dataclass
class StreamSummary:
    """Counts over the alerts read."""

    topic: str
    alerts: int = 0
    keys: set[int] = field(default_factory=set)
    schemas: Counter = field(default_factory=Counter)
    with_dia_object: int = 0
    with_ss_source: int = 0
    prv_dia_sources: int = 0
    undecodable: int = 0
    offsets: dict[int, list[int]] = field(default_factory=dict)

    def add(self, a: StreamAlert) -> None:
        """Count one alert."""
        span = self.offsets.setdefault(a.partition, [a.offset, a.offset])
        span[0], span[1] = min(span[0], a.offset), max(span[1], a.offset)
        if a.record is None:
            self.undecodable += 1
            return
        self.alerts += 1
        self.keys.add(a.key if a.key is not None else a.record["diaSourceId"])
        self.schemas[version_of_id(a.schema_id)] += 1
        self.with_dia_object += a.record.get("diaObject") is not None
        self.with_ss_source += a.record.get("ssSource") is not None
        self.prv_dia_sources += len(a.record.get("prvDiaSources") or [])

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return {
            "topic": self.topic,
            "alerts": self.alerts,
            "unique_keys": len(self.keys),
            "duplicates": self.alerts - len(self.keys),
            "schemas": dict(self.schemas),
            "with_diaObject": self.with_dia_object,
            "with_ssSource": self.with_ss_source,
            "prvDiaSources": self.prv_dia_sources,
            "undecodable": self.undecodable,
            "offsets": {str(p): span for p, span in sorted(self.offsets.items())},
        }


class AlertStreamReader:
    """Reads every partition of an alert topic, without a consumer group's commits.

    Parameters
    ----------
    connection : KafkaConnection
    topic : str
    from_beginning : bool
        Start at each partition's first message; else only at new ones.
    timeout : float
        Seconds to wait for the broker's metadata.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str,
        from_beginning: bool = False,
        timeout: float = 10.0,
    ) -> None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

        conf = connection.client_config()
        conf.update(
            {
                "group.id": f"nightpipe-alerts-{time.time_ns()}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        self.topic = topic
        self._consumer = Consumer(conf)
        try:
            meta = self._consumer.list_topics(timeout=timeout)
        except Exception as exc:
            self._consumer.close()
            raise KafkaError(f"no Kafka broker at {connection.bootstrap_servers}: {exc}") from exc
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            self._consumer.close()
            raise KafkaError(f"topic {topic!r} on {connection.bootstrap_servers} does not exist")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        self.partitions = tuple(sorted(info.partitions))
        self._consumer.assign([TopicPartition(topic, p, start) for p in self.partitions])

    def read(
        self, count: int | None = None, to_end: bool = False, idle: float | None = None
    ) -> Iterator[StreamAlert]:
        """Decoded alerts, in each partition's order.

        Parameters
        ----------
        count : int, optional
            Stop after this many.
        to_end : bool
            Stop once every partition has been read to its end (the end the
            broker reports when the reader gets there).
        idle : float, optional
            Stop after this many seconds without a message.
        """
        from confluent_kafka import KafkaError as CKError

        done = 0
        at_end: set[int] = set()
        last = time.monotonic()
        while count is None or done < count:
            if to_end and len(at_end) == len(self.partitions):
                return
            if idle is not None and time.monotonic() - last > idle:
                return
            msgs = self._consumer.consume(1000 if count is None else min(1000, count - done), 0.2)
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == CKError._PARTITION_EOF:
                        at_end.add(m.partition())
                    elif err.fatal():
                        raise KafkaError(f"Kafka consumer failed: {err}")
                    continue
                last = time.monotonic()
                at_end.discard(m.partition())
                yield _decode(m)
                done += 1
                if count is not None and done >= count:
                    return

    def close(self) -> None:
        """Leave the broker."""
        self._consumer.close()


def _decode(m: Any) -> StreamAlert:
    headers = dict(m.headers() or ())
    stamp = headers.get(TIMESTAMP_HEADER)
    common = {
        "partition": m.partition(),
        "offset": m.offset(),
        "key": key_id(m.key()),
        "producer_timestamp_ms": float(stamp) if stamp else None,
    }
    try:
        sid, record = decode_alert(m.value() or b"")
    except Exception as exc:  # a bad message is reported, not fatal
        return StreamAlert(schema_id=None, record=None, error=str(exc), **common)
    return StreamAlert(schema_id=sid, record=record, **common)


def _num(v: float | None) -> str:
    return "null" if v is None else f"{v:.6g}"


def topic_keys(connection: KafkaConnection, topic: str, timeout: float = 60.0) -> np.ndarray:
    """The ``diaSourceId`` key of every message of an alert topic, duplicates included.

    Reads each partition to its end without decoding; a message without an
    8-byte key counts as -1.
    """
    keys = [key_id(m.key()) for m in topic_messages(connection, topic, timeout)]
    return np.array([-1 if k is None else k for k in keys], np.int64)
