"""Validation of incoming events: raw bytes, text or dict in, `Event` or `EventError` out."""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from events.envelope import Event
from events.types import VOCABULARY, FieldSpec, Vocabulary, is_control, short_repr

MAX_BYTES = 65536
MAX_ID_CHARS = 128
MAX_SOURCE_CHARS = 256
MAX_DEPTH = 32
MAX_FOV_ID = 2**63 - 1
TIME_RANGE = (946684800.0, 4102444800.0)
"""Plausible send times: 2000-01-01 to 2100-01-01, Unix seconds."""

ENVELOPE_FIELDS = frozenset({"id", "type", "time", "source", "fov_id", "body"})


class EventError(ValueError):
    """An event was rejected.

    Parameters
    ----------
    reason : str
        What is wrong, e.g. ``must be in [-90, 90], got 95.0``.
    event_id : str or None
        The event's id, when it could be read.
    field : str or None
        The field at fault, dotted from the envelope, e.g. ``body.dec``.
    event_type : str or None
        The event's type, when it could be read and is known.
    """

    def __init__(
        self,
        reason: str,
        event_id: str | None = None,
        field: str | None = None,
        event_type: str | None = None,
    ) -> None:
        self.reason = reason
        self.event_id = event_id
        self.field = field
        self.event_type = event_type
        super().__init__(self._message())

    def _message(self) -> str:
        head = "event" if self.event_id is None else f"event {self.event_id!r}"
        if self.event_type is not None:
            head += f" ({self.event_type})"
        where = "" if self.field is None else f"field {self.field}: "
        return f"{head}: {where}{self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.event_id, self.field, self.event_type))


def parse_event(
    raw: bytes | str | dict[str, Any],
    max_bytes: int = MAX_BYTES,
    vocabulary: Vocabulary = VOCABULARY,
    *,
    inbound: bool = False,
) -> Event:
    """Validate one event and build it.

    Parameters
    ----------
    raw : bytes, str or dict
        The event as received: UTF-8 JSON bytes, JSON text, or a decoded dict.
    max_bytes : int
        Largest accepted encoded size; larger input is rejected before parsing.
    vocabulary : Vocabulary
        The types known and their body fields.
    inbound : bool
        The event comes from outside: a type the pipeline sends is refused.

    Returns
    -------
    Event
        The event, with float fields of the body as floats.

    Raises
    ------
    EventError
        For any invalid input, and for nothing else.
    """
    try:
        return _parse(raw, max_bytes, vocabulary, inbound)
    except EventError:
        raise
    except Exception as exc:  # the contract is EventError for any input whatsoever
        raise EventError(f"internal validation error: {type(exc).__name__}: {exc}") from exc


def _parse(raw: Any, max_bytes: int, vocabulary: Vocabulary, inbound: bool) -> Event:
    d = _load(raw, max_bytes)
    if not isinstance(d, dict):
        raise EventError(f"must be a JSON object, got {type(d).__name__}")
    eid = _check_id(d)
    etype = _check_type(d, eid, vocabulary, inbound)
    ctx = _Ctx(eid, etype, vocabulary)
    for key in d:
        if key not in ENVELOPE_FIELDS:
            name = str(key) if len(str(key)) <= 64 else short_repr(key, 64)
            ctx.fail(name, "unknown envelope field (type-specific fields go in 'body')")
    if "time" not in d:
        ctx.fail("time", "required field missing")
    time = ctx.number("time", d["time"])
    if not TIME_RANGE[0] <= time <= TIME_RANGE[1]:
        ctx.fail("time", f"must be Unix seconds between 2000 and 2100, got {short_repr(time)}")
    if "source" not in d:
        ctx.fail("source", "required field missing")
    source = d["source"]
    if not isinstance(source, str):
        ctx.fail("source", f"must be a string, got {_kind(source)}")
    if len(source) > MAX_SOURCE_CHARS:
        ctx.fail("source", f"must be at most {MAX_SOURCE_CHARS} characters, got {len(source)}")
    fov_id = ctx.fov_id(d.get("fov_id"), "fov_id" in d)
    body = ctx.body(d.get("body", {}))
    event = Event(id=eid, type=etype, time=time, source=source, fov_id=fov_id, body=body)
    if isinstance(raw, dict):
        size = len(event.to_json().encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            ctx.fail(None, f"event is {size} bytes as JSON, more than the limit of {max_bytes}")
    return event


def _load(raw: Any, max_bytes: int) -> Any:
    if isinstance(raw, dict):
        try:
            size = len(json.dumps(raw, default=repr).encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError, RecursionError):
            return raw  # not plain JSON: the field checks say where
        if size > max_bytes:
            eid = raw.get("id")
            raise EventError(
                f"event is {size} bytes as JSON, more than the limit of {max_bytes}",
                eid if isinstance(eid, str) and eid else None,
            )
        return raw
    if isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
        if len(data) > max_bytes:
            raise EventError(f"message is {len(data)} bytes, more than the limit of {max_bytes}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventError(f"not UTF-8 text: {exc}") from None
    elif isinstance(raw, str):
        size = len(raw) if len(raw) > max_bytes else len(raw.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise EventError(f"message is {size} bytes, more than the limit of {max_bytes}")
        text = raw
    else:
        raise EventError(f"expected bytes, str or dict, got {type(raw).__name__}")
    try:
        return json.loads(text)
    except RecursionError:
        raise EventError("not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise EventError(f"not valid JSON: {exc}") from None


def _check_id(d: dict[Any, Any]) -> str:
    if "id" not in d:
        raise EventError("required field missing", field="id")
    eid = d["id"]
    if not isinstance(eid, str) or not eid:
        raise EventError(f"must be a non-empty string, got {short_repr(eid)}", field="id")
    if len(eid) > MAX_ID_CHARS:
        raise EventError(
            f"must be at most {MAX_ID_CHARS} characters, got {len(eid)}: {short_repr(eid)}",
            field="id",
        )
    if not eid.isprintable():
        raise EventError(f"must be printable text, got {short_repr(eid)}", field="id")
    return eid


def _check_type(d: dict[Any, Any], eid: str, vocabulary: Vocabulary, inbound: bool) -> str:
    if "type" not in d:
        raise EventError("required field missing", eid, "type")
    etype = d["type"]
    if not isinstance(etype, str):
        raise EventError(f"must be a string, got {_kind(etype)}", eid, "type")
    if etype not in vocabulary.known:
        known = ", ".join(sorted(vocabulary.inbound if inbound else vocabulary.known))
        raise EventError(f"unknown event type {short_repr(etype)}; known: {known}", eid, "type")
    if inbound and etype in vocabulary.outbound:
        raise EventError(
            f"{etype} is an event this pipeline sends; it is not accepted inbound", eid, "type"
        )
    return etype


def _kind(v: Any) -> str:
    """Type name and short value, for messages: ``bool True``."""
    return f"{type(v).__name__} {short_repr(v)}"


class _Ctx:
    """Field checks for one event, raising errors that name it."""

    def __init__(self, eid: str, etype: str, vocabulary: Vocabulary) -> None:
        self.eid = eid
        self.etype = etype
        self.specs = vocabulary.specs[etype]

    def fail(self, field: str | None, reason: str) -> NoReturn:
        raise EventError(reason, self.eid, field, self.etype)

    def number(self, field: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.fail(field, f"must be a number, got {_kind(v)}")
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            self.fail(field, f"must be a finite number, got {short_repr(v)}")
        return f

    def integer(self, field: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(field, f"must be an integer, got {_kind(v)}")
        return int(v)

    def fov_id(self, v: Any, present: bool) -> int | None:
        if is_control(self.etype):
            if v is not None:
                self.fail("fov_id", f"must be null for control events, got {short_repr(v)}")
            return None
        if not present or v is None:
            self.fail("fov_id", f"required for {self.etype} events (an integer >= 0)")
        fov = self.integer("fov_id", v)
        if not 0 <= fov <= MAX_FOV_ID:
            self.fail("fov_id", f"must be in [0, 2**63-1], got {short_repr(fov)}")
        return fov

    def body(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            self.fail("body", f"must be a JSON object, got {_kind(body)}")
        out = dict(body)
        known = {spec.name for spec in self.specs}
        for key in body:
            if key not in known:
                name = str(key) if len(str(key)) <= 64 else short_repr(key, 64)
                expected = ", ".join(sorted(known)) or "none"
                self.fail(f"body.{name}", f"unknown field; {self.etype} takes: {expected}")
        for spec in self.specs:
            if spec.name in body:
                out[spec.name] = self.field(spec, body[spec.name])
            elif spec.required:
                self.fail(f"body.{spec.name}", "required field missing")
        self.json_value("body", out, 0)
        return out

    def field(self, spec: FieldSpec, v: Any) -> Any:
        name = f"body.{spec.name}"
        if spec.kind == "float":
            v = self.number(name, v)
        elif spec.kind == "int":
            v = self.integer(name, v)
        elif spec.kind == "bool":
            if not isinstance(v, bool):
                self.fail(name, f"must be true or false, got {_kind(v)}")
        elif spec.kind == "str":
            if not isinstance(v, str):
                self.fail(name, f"must be a string, got {_kind(v)}")
        elif spec.kind == "str_list":
            if not isinstance(v, list):
                self.fail(name, f"must be a list of strings, got {_kind(v)}")
            for i, item in enumerate(v):
                if not isinstance(item, str) or not item:
                    self.fail(f"{name}[{i}]", f"must be a non-empty string, got {_kind(item)}")
        elif spec.kind == "dict":
            if not isinstance(v, dict):
                self.fail(name, f"must be a JSON object, got {_kind(v)}")
        else:
            raise AssertionError(f"unknown field kind {spec.kind!r} in events.types")
        if spec.check is not None:
            reason = spec.check(v)
            if reason is not None:
                self.fail(name, reason)
        return v

    def json_value(self, path: str, v: Any, depth: int) -> None:
        """Check `v` is plain JSON: str keys, finite numbers, bounded nesting."""
        if depth > MAX_DEPTH:
            self.fail(path, f"nested more than {MAX_DEPTH} levels deep")
        if v is None or isinstance(v, str | bool | int):
            return
        if isinstance(v, float):
            if not math.isfinite(v):
                self.fail(path, f"must be a finite number, got {short_repr(v)}")
        elif isinstance(v, list):
            for i, item in enumerate(v):
                self.json_value(f"{path}[{i}]", item, depth + 1)
        elif isinstance(v, dict):
            for key, item in v.items():
                if not isinstance(key, str):
                    self.fail(path, f"keys must be strings, got {_kind(key)}")
                self.json_value(f"{path}.{key}", item, depth + 1)
        else:
            self.fail(path, f"not a JSON value: {_kind(v)}")
