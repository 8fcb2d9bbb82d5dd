"""Events: the envelope, the vocabulary, validation, the journal and the network interface."""

from __future__ import annotations

from events.envelope import Event
from events.journal import Journal
from events.types import (
    ALERTS_READY,
    DIASOURCES_READY,
    NEXT_VISIT,
    PREDICTIONS_READY,
    SHUTDOWN,
    VISIT_DONE,
    VISIT_FAILED,
)
from events.validate import EventError, parse_event

__all__ = [
    "ALERTS_READY",
    "DIASOURCES_READY",
    "NEXT_VISIT",
    "PREDICTIONS_READY",
    "SHUTDOWN",
    "VISIT_DONE",
    "VISIT_FAILED",
    "Event",
    "EventError",
    "Journal",
    "parse_event",
]
