"""The event vocabulary: type names and the body fields each type carries."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

NEXT_VISIT = "telescope.next_visit"
DIASOURCES_READY = "detection.diasources_ready"
PREDICTIONS_READY = "nightmops.predictions_ready"
SHUTDOWN = "control.shutdown"
ALERTS_READY = "association.alerts_ready"
VISIT_DONE = "association.visit_done"
VISIT_FAILED = "association.visit_failed"

INBOUND_TYPES: frozenset[str] = frozenset({NEXT_VISIT, DIASOURCES_READY, PREDICTIONS_READY})
CONTROL_TYPES: frozenset[str] = frozenset({SHUTDOWN})
OUTBOUND_TYPES: frozenset[str] = frozenset({ALERTS_READY, VISIT_DONE, VISIT_FAILED})

FILTERS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")

Check = Callable[[Any], str | None]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One body field of an event type.

    Parameters
    ----------
    name : str
        Key in the event body.
    kind : str
        One of ``float`` (finite number; ints accepted), ``int`` (not bool),
        ``str``, ``str_list`` (list of str) or ``dict``.
    required : bool
        Whether the field must be present.
    check : callable or None
        Extra check on a value of the right kind; returns a reason or None.
    """

    name: str
    kind: str
    required: bool = True
    check: Check | None = None


def short_repr(v: Any, limit: int = 40) -> str:
    """``repr(v)`` cut to about `limit` characters, for error messages."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def in_range(lo: float, hi: float, hi_open: bool = False) -> Check:
    """Check ``lo <= v <= hi`` (``v < hi`` when `hi_open`)."""
    bracket = ")" if hi_open else "]"

    def check(v: Any) -> str | None:
        if lo <= v and (v < hi if hi_open else v <= hi):
            return None
        return f"must be in [{lo:g}, {hi:g}{bracket}, got {short_repr(v)}"

    return check


def positive(v: Any) -> str | None:
    """Check ``v > 0``."""
    return None if v > 0 else f"must be > 0, got {short_repr(v)}"


def non_negative(v: Any) -> str | None:
    """Check ``v >= 0``."""
    return None if v >= 0 else f"must be >= 0, got {short_repr(v)}"


def non_empty(v: Any) -> str | None:
    """Check a list or string has at least one element."""
    return None if len(v) > 0 else "must not be empty"


def one_of(choices: tuple[str, ...]) -> Check:
    """Check the value is one of `choices`."""

    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}, got {short_repr(v)}"

    return check


BODY_SPECS: Mapping[str, tuple[FieldSpec, ...]] = {
    NEXT_VISIT: (
        FieldSpec("mjd", "float"),
        FieldSpec("ra", "float", check=in_range(0, 360, hi_open=True)),
        FieldSpec("dec", "float", check=in_range(-90, 90)),
        FieldSpec("filter", "str", check=one_of(FILTERS)),
        FieldSpec("seeing", "float", required=False, check=positive),
        FieldSpec("radius", "float", required=False, check=positive),
        FieldSpec("exposure_time", "float", required=False, check=non_negative),
    ),
    DIASOURCES_READY: (
        FieldSpec("paths", "str_list", check=non_empty),
        FieldSpec("match_radius", "float", required=False, check=positive),
        FieldSpec("n_sources", "int", required=False, check=non_negative),
    ),
    PREDICTIONS_READY: (FieldSpec("paths", "str_list"),),
    SHUTDOWN: (FieldSpec("reason", "str", required=False),),
    ALERTS_READY: (
        FieldSpec("path", "str"),
        FieldSpec("n_alerts", "int"),
        FieldSpec("n_sources", "int"),
        FieldSpec("n_new_objects", "int"),
        FieldSpec("n_moving", "int"),
        FieldSpec("topic", "str", required=False),  # the Kafka alert topic, when streamed
        FieldSpec("offsets", "dict", required=False),  # {"partition": [first, last]}
    ),
    VISIT_DONE: (
        FieldSpec("timings", "dict", required=False),
        FieldSpec("counts", "dict", required=False),
    ),
    VISIT_FAILED: (
        FieldSpec("stage", "str"),
        FieldSpec("hook", "str"),
        FieldSpec("rank", "int"),
        FieldSpec("error", "str"),
        FieldSpec("traceback", "str", required=False),
    ),
}
"""Body fields per event type; every known type has an entry."""

KNOWN_TYPES: frozenset[str] = frozenset(BODY_SPECS)


def is_control(event_type: str) -> bool:
    """Whether `event_type` is a control event (no fov_id)."""
    return event_type.startswith("control.")
