"""Event intake: events in from the network, other sources and threads, validated and journaled.

Beside the ZeroMQ endpoint, an intake takes events from any `EventSource`: a
source hands over raw messages (each one event envelope) and is told to
commit them once their events are journaled (a Kafka consumer commits its
offsets then). A source is read without waiting, in the master's loop.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from events.deadletter import DeadLetters
from events.endpoint import Endpoint, error_reply, ok_reply
from events.envelope import Event
from events.journal import Journal
from events.types import Vocabulary
from events.validate import EventError, parse_event
from framework.config import RuntimeConfig

SOURCE_BATCH = 1024
"""Most messages taken from one source per poll."""

TROUBLE_EVERY_S = 10.0
"""A failing source is logged at most this often."""


class RawMessage(Protocol):
    """One message of an `EventSource`: its bytes, and where it came from (for dead letters)."""

    @property
    def raw(self) -> bytes: ...

    @property
    def where(self) -> str: ...


class EventSource(Protocol):
    """Events from elsewhere than the endpoint (a Kafka consumer, say).

    Nothing a source hands over is acted on before it is journaled, and a
    source must deliver again, after a restart, what it was not told to
    commit; the journal drops what it already holds, by event id.
    """

    def receive(self, timeout: float, max_batch: int) -> Sequence[RawMessage]:
        """The messages there now (waiting up to `timeout` s), at most `max_batch`."""
        ...

    def commit(self, messages: Sequence[RawMessage]) -> None:
        """The events of `messages` are journaled (or dead-lettered): never deliver them again."""
        ...

    def close(self) -> None:
        """Release the source; nothing more is committed."""
        ...


@dataclass
class IntakeCounts:
    """Events taken in so far."""

    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0


class Intake:
    """Takes events in, validates them and journals them before anything acts on them.

    An invalid event is rejected with its reason: to the sender and to the
    dead-letter log. A duplicate id is acknowledged and ignored. While the
    pipeline drains, a new starting event is refused, and the `sources` are
    no longer read: what they hold stays there for the next run.

    Parameters
    ----------
    journal, dead : Journal, DeadLetters
        Where accepted and rejected events go.
    vocabulary : Vocabulary
        The event types known; those the pipeline sends are refused inbound.
    start : str
        The event type that starts an execution.
    endpoint : Endpoint or None
        The network endpoint, if the pipeline listens on one.
    max_bytes : int
        Largest accepted event.
    log : Logger
    start_conflict : callable, optional
        ``start_conflict(fov_id)`` says why a new starting event for that FOV
        cannot be taken (it is running, queued or ended), or returns None.
    sources : sequence of EventSource
        Other sources of events, read beside the endpoint.
    """

    def __init__(
        self,
        journal: Journal,
        dead: DeadLetters,
        vocabulary: Vocabulary,
        start: str,
        endpoint: Endpoint | None,
        max_bytes: int,
        log: logging.Logger,
        start_conflict: Callable[[int], str | None] | None = None,
        sources: Sequence[EventSource] = (),
    ) -> None:
        self.journal = journal
        self.dead = dead
        self.vocabulary = vocabulary
        self.start = start
        self.endpoint = endpoint
        self.max_bytes = max_bytes
        self.log = log
        self.start_conflict = start_conflict
        self.counts = IntakeCounts()
        self.sources = list(sources)
        self._inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._more = False
        self._quiet_until: dict[int, float] = {}

    def submit(self, events: list[Event]) -> None:
        """Hand over already-parsed events from another thread; `poll` journals them."""
        for ev in events:
            self._inbox.put(ev)

    def poll(self, timeout: float, draining: bool) -> list[tuple[Event, int]]:
        """Take what has arrived (waiting up to `timeout` on the network).

        Returns the new events, journaled, in arrival order, each with its
        journal position.
        """
        items: list[tuple[Event, Any]] = []
        while True:
            try:
                items.append((self._inbox.get_nowait(), None))
            except queue.Empty:
                break
        new = self._take(items, draining, "inbox")[1] if items else []
        self._more = False
        if not draining:
            for source in self.sources:
                new += self._from_source(source)
        if self.endpoint is None:
            return new
        reqs = self.endpoint.receive(0.0 if new or items or self._more else timeout)
        parsed: list[tuple[Event, Any]] = []
        for req in reqs:
            try:
                ev = parse_event(req.raw, self.max_bytes, self.vocabulary, inbound=True)
            except EventError as exc:
                self._reject(req.raw, exc, "endpoint")
                self.endpoint.reply(req, error_reply(exc))
                continue
            parsed.append((ev, req))
        if parsed:
            replies, more = self._take(parsed, draining, "endpoint")
            for (_, req), rep in zip(parsed, replies, strict=True):
                self.endpoint.reply(req, rep)
            new += more
        return new

    def _from_source(self, source: EventSource) -> list[tuple[Event, int]]:
        """Journal what a source holds now, dead-letter what is invalid, then commit it."""
        try:
            messages = source.receive(0.0, SOURCE_BATCH)
        except Exception as exc:  # the source's client reconnects by itself
            self._source_trouble(source, "receive failed", exc)
            return []
        if not messages:
            return []
        self._more = self._more or len(messages) >= SOURCE_BATCH
        parsed: list[tuple[Event, Any]] = []
        for m in messages:
            try:
                ev = parse_event(m.raw, self.max_bytes, self.vocabulary, inbound=True)
            except EventError as exc:
                self._reject(m.raw, exc, m.where)
                continue
            parsed.append((ev, m))
        new = self._take(parsed, False, messages[0].where)[1] if parsed else []
        try:
            source.commit(messages)
        except Exception as exc:  # journaled already: a redelivery is dropped by its id
            self._source_trouble(source, "commit failed", exc)
        return new

    def _source_trouble(self, source: EventSource, what: str, exc: Exception) -> None:
        """Log a source's failure, at most once every `TROUBLE_EVERY_S` per source."""
        now = time.monotonic()
        if now >= self._quiet_until.get(id(source), 0.0):
            self._quiet_until[id(source)] = now + TROUBLE_EVERY_S
            self.log.warning("event source %s: %s: %s", type(source).__name__, what, exc)

    def close(self) -> None:
        """Release the event sources."""
        for source in self.sources:
            try:
                source.close()
            except Exception:
                self.log.exception("event source %s: close failed", type(source).__name__)
        self.sources = []

    @property
    def busy(self) -> bool:
        """True if events are waiting in the inbox, or a source had more than one poll takes."""
        return self._more or not self._inbox.empty()

    def _reject(self, raw: Any, error: EventError | str, source: str) -> None:
        self.counts.rejected += 1
        self.dead.write(raw, error, source)
        self.log.warning("rejected event: %s", error)

    def _refuse_start(self, ev: Event, draining: bool) -> str | None:
        """Why a starting event cannot be taken, or None (a duplicate id is taken, and ignored)."""
        if self.journal.has_id(ev.id):
            return None
        if draining:
            return f"event {ev.id!r}: pipeline is shutting down and takes no new {ev.type}"
        why = None if self.start_conflict is None else self.start_conflict(ev.fov_id)  # type: ignore[arg-type]
        if why is not None:
            return f"event {ev.id!r} ({ev.type}): fov {ev.fov_id} {why}; a visit starts once"
        return None

    def _take(
        self, items: list[tuple[Event, Any]], draining: bool, where: str
    ) -> tuple[list[dict[str, Any]], list[tuple[Event, int]]]:
        replies: list[dict[str, Any] | None] = [None] * len(items)
        keep = []
        for i, (ev, _) in enumerate(items):
            msg = self._refuse_start(ev, draining) if ev.type == self.start else None
            if msg is not None:
                self._reject(ev.to_json(), msg, getattr(items[i][1], "where", where))
                replies[i] = {"ok": False, "error": msg, "event_id": ev.id, "field": "type"}
            else:
                keep.append(i)
        seqs = self.journal.accept_seq([items[i][0] for i in keep]) if keep else []
        new = []
        for i, seq in zip(keep, seqs, strict=True):
            ev = items[i][0]
            replies[i] = ok_reply(ev, seq is not None)
            if seq is not None:
                self.counts.accepted += 1
                new.append((ev, seq))
            else:
                self.counts.duplicates += 1
                self.log.info("duplicate event %s (%s) ignored", ev.id, ev.type)
        return replies, new  # type: ignore[return-value]


def configured_sources(runtime: RuntimeConfig, pipeline: str) -> list[EventSource]:
    """The event sources ``[runtime]`` names: a Kafka consumer when ``kafka_bootstrap`` is set.

    Raises
    ------
    events.kafka.KafkaError
        If the broker cannot be reached or a topic does not exist.
    """
    if not runtime.kafka_bootstrap:
        return []
    from events.kafka import KafkaConnection, KafkaEventSource

    connection = KafkaConnection(
        runtime.kafka_bootstrap,
        security_protocol=runtime.kafka_security_protocol,
        sasl_mechanism=runtime.kafka_sasl_mechanism or None,
        sasl_username=runtime.kafka_sasl_username or None,
        sasl_password_env=runtime.kafka_sasl_password_env or None,
    )
    group = runtime.kafka_group_id or f"nightpipe-{pipeline}"
    return [KafkaEventSource(connection, runtime.kafka_topics, group)]
