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
        ``bool``, ``str``, ``str_list`` (list of str) or ``dict``.
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


def in_open_closed(lo: float, hi: float) -> Check:
    """Check ``lo < v <= hi``."""

    def check(v: Any) -> str | None:
        return None if lo < v <= hi else f"must be in ({lo:g}, {hi:g}], got {short_repr(v)}"

    return check


def between_items(lo: int, hi: int) -> Check:
    """Check a list has `lo` to `hi` items."""

    def check(v: Any) -> str | None:
        return None if lo <= len(v) <= hi else f"must have {lo} to {hi} items, got {len(v)}"

    return check


def at_most_chars(n: int) -> Check:
    """Check a string has at most `n` characters."""

    def check(v: Any) -> str | None:
        return None if len(v) <= n else f"must be at most {n} characters, got {len(v)}"

    return check


def one_of(choices: tuple[str, ...]) -> Check:
    """Check the value is one of `choices`."""

    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}, got {short_repr(v)}"

    return check


MJD_RANGE = (40587.0, 88069.0)
"""Plausible MJDs: 1970 to 2100."""

MAX_FOV_RADIUS_DEG = 6.0
"""The largest field of view taken: wider than any survey camera's (ZTF's 47 deg² is 3.9°)."""

MAX_MATCH_RADIUS_ARCSEC = 30.0
"""The largest match radius taken."""

INBOUND_SPECS: Mapping[str, tuple[FieldSpec, ...]] = {
    NEXT_VISIT: (
        FieldSpec("mjd", "float", check=in_range(*MJD_RANGE)),
        FieldSpec("ra", "float", check=in_range(0, 360, hi_open=True)),
        FieldSpec("dec", "float", check=in_range(-90, 90)),
        FieldSpec("filter", "str", check=one_of(FILTERS)),
        FieldSpec("seeing", "float", required=False, check=in_open_closed(0, 20)),
        FieldSpec("radius", "float", required=False, check=in_open_closed(0, MAX_FOV_RADIUS_DEG)),
        FieldSpec("exposure_time", "float", required=False, check=in_range(0, 3600)),
    ),
    DIASOURCES_READY: (
        FieldSpec("paths", "str_list", check=between_items(1, 1000)),
        FieldSpec(
            "match_radius",
            "float",
            required=False,
            check=in_open_closed(0, MAX_MATCH_RADIUS_ARCSEC),
        ),
        FieldSpec("n_sources", "int", required=False, check=in_range(0, 10**8)),
    ),
    PREDICTIONS_READY: (FieldSpec("paths", "str_list", check=between_items(0, 1000)),),
    SHUTDOWN: (FieldSpec("reason", "str", required=False, check=at_most_chars(1000)),),
}
"""Body fields of the events the observatory sends in, and of control events."""

OUTCOME_DONE_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("timings", "dict", required=False),
    FieldSpec("counts", "dict", required=False),
    FieldSpec("ended_early", "str", required=False),
)
"""Body of a pipeline's "execution done" event, whatever the pipeline names it."""

OUTCOME_FAILED_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("stage", "str"),
    FieldSpec("hook", "str"),
    FieldSpec("rank", "int"),
    FieldSpec("error", "str"),
    FieldSpec("traceback", "str", required=False),
    FieldSpec("transitions", "str_list", required=False),
    FieldSpec("retriable", "bool", required=False),
)
"""Body of a pipeline's "execution failed" event."""

ASSOCIATION_SPECS: Mapping[str, tuple[FieldSpec, ...]] = {
    ALERTS_READY: (
        FieldSpec("path", "str"),
        FieldSpec("n_alerts", "int"),
        FieldSpec("n_sources", "int"),
        FieldSpec("n_new_objects", "int"),
        FieldSpec("n_moving", "int"),
        FieldSpec("topic", "str", required=False),  # the Kafka alert topic, when streamed
        FieldSpec("offsets", "dict", required=False),  # {"partition": [first, last]}
        FieldSpec("write_s", "float", required=False),  # the database transaction's seconds
    ),
}
"""Body fields of the events the association pipeline sends out; it registers them."""

OUTCOME_SPECS: Mapping[str, tuple[FieldSpec, ...]] = {
    VISIT_DONE: OUTCOME_DONE_FIELDS,
    VISIT_FAILED: OUTCOME_FAILED_FIELDS,
}
"""The association pipeline's outcome events."""

BODY_SPECS: Mapping[str, tuple[FieldSpec, ...]] = {
    **INBOUND_SPECS,
    **ASSOCIATION_SPECS,
    **OUTCOME_SPECS,
}
"""Body fields per event type; every known type has an entry."""

KNOWN_TYPES: frozenset[str] = frozenset(BODY_SPECS)


@dataclass(frozen=True)
class Vocabulary:
    """The event types a validator knows: body fields per type, and which go out only.

    Parameters
    ----------
    specs : mapping
        Body fields per event type.
    outbound : frozenset of str
        Types a pipeline sends; an event of one of them is refused inbound.
    """

    specs: Mapping[str, tuple[FieldSpec, ...]]
    outbound: frozenset[str] = frozenset()

    @property
    def known(self) -> frozenset[str]:
        """Every type named."""
        return frozenset(self.specs)

    @property
    def inbound(self) -> frozenset[str]:
        """The types accepted from outside."""
        return self.known - self.outbound

    def register(self, specs: Mapping[str, tuple[FieldSpec, ...]], *, outbound: bool) -> Vocabulary:
        """A vocabulary with `specs` added (a type already known keeps its fields)."""
        merged = {**specs, **self.specs}
        out = self.outbound | frozenset(specs) if outbound else self.outbound
        return Vocabulary(merged, out)


INBOUND = Vocabulary(INBOUND_SPECS)
"""What any pipeline accepts from the observatory: its events and control events."""

VOCABULARY = INBOUND.register({**ASSOCIATION_SPECS, **OUTCOME_SPECS}, outbound=True)
"""The whole vocabulary, for tools that read any event (report, inject, tests)."""


def is_control(event_type: str) -> bool:
    """Whether `event_type` is a control event (no fov_id)."""
    return event_type.startswith("control.")
