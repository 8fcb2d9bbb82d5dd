"""Event intake: events in from the network and other threads, validated and journaled."""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from events.deadletter import DeadLetters
from events.endpoint import Endpoint, error_reply, ok_reply
from events.envelope import Event
from events.journal import Journal
from events.types import Vocabulary
from events.validate import EventError, parse_event


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
    pipeline drains, a new starting event is refused.

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
        self._inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()

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
        new = self._take(items, draining)[1] if items else []
        if self.endpoint is None:
            return new
        reqs = self.endpoint.receive(0.0 if items else timeout)
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
            replies, more = self._take(parsed, draining)
            for (_, req), rep in zip(parsed, replies, strict=True):
                self.endpoint.reply(req, rep)
            new += more
        return new

    @property
    def busy(self) -> bool:
        """True if events are waiting in the inbox."""
        return not self._inbox.empty()

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
        self, items: list[tuple[Event, Any]], draining: bool
    ) -> tuple[list[dict[str, Any]], list[tuple[Event, int]]]:
        replies: list[dict[str, Any] | None] = [None] * len(items)
        keep = []
        for i, (ev, _) in enumerate(items):
            msg = self._refuse_start(ev, draining) if ev.type == self.start else None
            if msg is not None:
                self._reject(ev.to_json(), msg, "endpoint")
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
