"""Validation of incoming events: valid examples pass, every kind of bad input names its fault."""

from __future__ import annotations

import copy
import json
import math
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import types as T
from events.envelope import Event
from events.validate import MAX_BYTES, EventError, parse_event

VALID_BODIES: dict[str, list[dict[str, Any]]] = {
    T.NEXT_VISIT: [
        {"mjd": 60000.125, "ra": 359.5, "dec": -89.5, "filter": "r"},
        {
            "mjd": 60000,
            "ra": 0,
            "dec": 90,
            "filter": "y",
            "seeing": 0.7,
            "radius": 1.75,
            "exposure_time": 0,
        },
    ],
    T.DIASOURCES_READY: [
        {"paths": ["/data/v1/diasources.parquet"]},
        {"paths": ["a.parquet", "b.parquet"], "match_radius": 1.0, "n_sources": 0},
    ],
    T.PREDICTIONS_READY: [{"paths": []}, {"paths": ["pred.parquet"]}],
    T.SHUTDOWN: [{}, {"reason": "end of night"}],
    T.ALERTS_READY: [
        {
            "path": "alerts/v1.avro",
            "n_alerts": 3,
            "n_sources": 10,
            "n_new_objects": 2,
            "n_moving": 1,
        }
    ],
    T.VISIT_DONE: [{}, {"timings": {"load": 0.1, "store": 0.2}, "counts": {"sources": 10}}],
    T.VISIT_FAILED: [
        {"stage": "compute", "hook": "crossmatch", "rank": 2, "error": "boom"},
        {"stage": "load", "hook": "h", "rank": 0, "error": "e", "traceback": "Traceback..."},
    ],
}


def envelope(etype: str, body: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    """A valid wire envelope of `etype` (first valid body unless given), with overrides."""
    d = {
        "id": "abc123",
        "type": etype,
        "time": 1_700_000_000.5,
        "source": "test",
        "fov_id": None if T.is_control(etype) else 7,
        "body": copy.deepcopy(VALID_BODIES[etype][0] if body is None else body),
    }
    d.update(over)
    return d


VALID = [envelope(t, b) for t, bodies in VALID_BODIES.items() for b in bodies]


def test_vocabulary_is_complete() -> None:
    assert set(VALID_BODIES) == T.KNOWN_TYPES


@pytest.mark.parametrize("form", ["dict", "str", "bytes"])
@pytest.mark.parametrize("d", VALID, ids=lambda d: d["type"])
def test_valid_examples_accepted(d: dict[str, Any], form: str) -> None:
    raw: Any = {"dict": d, "str": json.dumps(d), "bytes": json.dumps(d).encode()}[form]
    event = parse_event(raw)
    assert event.id == d["id"]
    assert event.type == d["type"]
    assert event.fov_id == d["fov_id"]
    assert event.body == d["body"]
    assert parse_event(event.to_json()) == event


def test_round_trip_of_new_event() -> None:
    e = Event.new(T.NEXT_VISIT, 0, {"mjd": 60001.0, "ra": 1.0, "dec": 1.0, "filter": "g"})
    assert parse_event(e.to_json()) == e


def test_ints_become_floats() -> None:
    d = envelope(T.NEXT_VISIT, {"mjd": 60000, "ra": 10, "dec": 0, "filter": "u"})
    event = parse_event(d)
    assert isinstance(event.body["ra"], float) and event.body["ra"] == 10.0


def test_unknown_body_keys_rejected() -> None:
    body = {"mjd": 60000, "ra": 10, "dec": 0, "filter": "u", "seing": 0.7}
    with pytest.raises(EventError) as info:
        parse_event(envelope(T.NEXT_VISIT, body))
    assert info.value.field == "body.seing"
    assert "unknown field" in info.value.reason and "seeing" in info.value.reason


def test_body_may_be_absent_for_shutdown() -> None:
    d = envelope(T.SHUTDOWN)
    del d["body"], d["fov_id"]
    assert parse_event(d).body == {}


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    d = copy.deepcopy(d)
    del d[key]
    return d


def _body(etype: str, **over: Any) -> dict[str, Any]:
    return envelope(etype, {**VALID_BODIES[etype][0], **over})


def _body_without(etype: str, key: str) -> dict[str, Any]:
    return envelope(etype, _without(VALID_BODIES[etype][0], key))


BAD: list[tuple[str, Any, str | None, str]] = [
    ("not json", b"{not json", None, "not valid JSON"),
    ("not utf8", b"\xff\xfe{}", None, "not UTF-8"),
    ("not object", b"[1, 2]", None, "must be a JSON object"),
    ("wrong python type", 42, None, "expected bytes, str or dict"),
    ("oversize bytes", b" " * (MAX_BYTES + 1), None, "more than the limit"),
    (
        "oversize dict",
        envelope(T.NEXT_VISIT, source="x" * MAX_BYTES),
        None,
        "more than the limit",
    ),
    ("missing id", _without(envelope(T.NEXT_VISIT), "id"), "id", "required field missing"),
    ("empty id", envelope(T.NEXT_VISIT, id=""), "id", "non-empty string"),
    ("long id", envelope(T.NEXT_VISIT, id="x" * 129), "id", "at most 128"),
    ("id not str", envelope(T.NEXT_VISIT, id=5), "id", "non-empty string"),
    ("unknown type", envelope(T.NEXT_VISIT, type="telescope.oops"), "type", "unknown event type"),
    ("missing type", _without(envelope(T.NEXT_VISIT), "type"), "type", "required field missing"),
    ("missing time", _without(envelope(T.NEXT_VISIT), "time"), "time", "required field missing"),
    ("time str", envelope(T.NEXT_VISIT, time="now"), "time", "must be a number"),
    ("time nan", envelope(T.NEXT_VISIT, time=math.nan), "time", "finite"),
    ("time bool", envelope(T.NEXT_VISIT, time=True), "time", "must be a number, got bool"),
    ("source int", envelope(T.NEXT_VISIT, source=1), "source", "must be a string"),
    ("missing fov", _without(envelope(T.NEXT_VISIT), "fov_id"), "fov_id", "required"),
    ("null fov", envelope(T.DIASOURCES_READY, fov_id=None), "fov_id", "required"),
    ("negative fov", envelope(T.NEXT_VISIT, fov_id=-1), "fov_id", "must be in [0"),
    ("huge fov", envelope(T.NEXT_VISIT, fov_id=2**70), "fov_id", "must be in [0"),
    ("bool fov", envelope(T.NEXT_VISIT, fov_id=True), "fov_id", "must be an integer, got bool"),
    ("float fov", envelope(T.NEXT_VISIT, fov_id=3.0), "fov_id", "must be an integer"),
    ("control with fov", envelope(T.SHUTDOWN, fov_id=3), "fov_id", "must be null"),
    ("body not object", envelope(T.NEXT_VISIT, body=[1]), "body", "must be a JSON object"),
    ("extra envelope", envelope(T.NEXT_VISIT, ra=1.0), "ra", "unknown envelope field"),
    ("missing dec", _body_without(T.NEXT_VISIT, "dec"), "body.dec", "required field missing"),
    ("dec out of range", _body(T.NEXT_VISIT, dec=95.0), "body.dec", "must be in [-90, 90]"),
    ("ra 360", _body(T.NEXT_VISIT, ra=360.0), "body.ra", "must be in [0, 360)"),
    ("ra str", _body(T.NEXT_VISIT, ra="10"), "body.ra", "must be a number, got str"),
    ("ra bool", _body(T.NEXT_VISIT, ra=False), "body.ra", "got bool"),
    ("mjd nan", _body(T.NEXT_VISIT, mjd=math.nan), "body.mjd", "finite"),
    ("mjd inf", _body(T.NEXT_VISIT, mjd=math.inf), "body.mjd", "finite"),
    ("mjd huge int", _body(T.NEXT_VISIT, mjd=10**400), "body.mjd", "finite"),
    ("bad filter", _body(T.NEXT_VISIT, filter="R"), "body.filter", "one of u, g, r"),
    ("seeing zero", _body(T.NEXT_VISIT, seeing=0), "body.seeing", "(0, 20]"),
    ("radius huge", _body(T.NEXT_VISIT, radius=1e308), "body.radius", "(0, 6]"),
    ("mjd implausible", _body(T.NEXT_VISIT, mjd=1.0), "body.mjd", "must be in [40587"),
    ("time implausible", envelope(T.NEXT_VISIT, time=5.0), "time", "between 2000 and 2100"),
    ("seeing null", _body(T.NEXT_VISIT, seeing=None), "body.seeing", "must be a number"),
    ("exptime neg", _body(T.NEXT_VISIT, exposure_time=-1), "body.exposure_time", "[0, 3600]"),
    ("paths empty", _body(T.DIASOURCES_READY, paths=[]), "body.paths", "1 to 1000 items"),
    ("paths str", _body(T.DIASOURCES_READY, paths="a"), "body.paths", "list of strings"),
    ("paths item", _body(T.DIASOURCES_READY, paths=["a", 3]), "body.paths[1]", "non-empty string"),
    ("n_sources bool", _body(T.DIASOURCES_READY, n_sources=True), "body.n_sources", "bool"),
    ("n_sources neg", _body(T.DIASOURCES_READY, n_sources=-2), "body.n_sources", "[0, "),
    ("n_sources float", _body(T.DIASOURCES_READY, n_sources=2.0), "body.n_sources", "integer"),
    ("preds missing", _body_without(T.PREDICTIONS_READY, "paths"), "body.paths", "missing"),
    ("reason int", _body(T.SHUTDOWN, reason=1), "body.reason", "must be a string"),
    ("n_alerts bool", _body(T.ALERTS_READY, n_alerts=True), "body.n_alerts", "bool"),
    ("timings list", _body(T.VISIT_DONE, timings=[]), "body.timings", "JSON object"),
    ("rank str", _body(T.VISIT_FAILED, rank="2"), "body.rank", "integer"),
    ("nan in extra", _body(T.VISIT_DONE, counts={"a": [math.nan]}), "body.counts.a[0]", "finite"),
    ("not json value", _body(T.VISIT_DONE, counts={"x": {1, 2}}), "body.counts.x", "JSON value"),
    ("unknown key", _body(T.VISIT_DONE, x=1), "body.x", "unknown field"),
]


@pytest.mark.parametrize(("raw", "field", "text"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_rejected(raw: Any, field: str | None, text: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(raw)
    err = info.value
    assert err.field == field
    assert text in err.reason
    if field is not None:
        assert f"field {field}: " in str(err)
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"] and field != "id":
        assert err.event_id == raw["id"]
        assert repr(raw["id"]) in str(err)


def test_message_format() -> None:
    with pytest.raises(EventError) as info:
        parse_event(json.dumps(_body(T.NEXT_VISIT, dec=95.0)))
    assert str(info.value) == (
        "event 'abc123' (telescope.next_visit): field body.dec: must be in [-90, 90], got 95.0"
    )
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.event_id, again.field, again.reason) == ("abc123", "body.dec", info.value.reason)


def test_oversize_rejected_before_parsing() -> None:
    raw = b"{" * (MAX_BYTES + 1)  # would be a JSON error if it were parsed
    with pytest.raises(EventError, match="more than the limit"):
        parse_event(raw)
    with pytest.raises(EventError, match="more than the limit"):
        parse_event(raw.decode())
    assert parse_event(json.dumps(VALID[0]), max_bytes=1000).id == "abc123"
    with pytest.raises(EventError, match="limit of 10"):
        parse_event(json.dumps(VALID[0]), max_bytes=10)


# ---- property tests: mutations of valid envelopes are rejected, cleanly ---------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _wrong_for(kind: str) -> st.SearchStrategy[Any]:
    """Values that are never valid for a field of `kind`."""
    if kind == "float":
        bad_num = st.sampled_from([math.nan, math.inf, -math.inf, 10**400])
        return JSON.filter(lambda v: not _is_number(v)) | bad_num
    if kind in ("int", "fov_id"):
        neg = st.integers(max_value=-1) if kind == "fov_id" else st.nothing()
        return JSON.filter(lambda v: not isinstance(v, int) or isinstance(v, bool)) | neg
    if kind == "str":
        return JSON.filter(lambda v: not isinstance(v, str))
    if kind == "str_list":
        bad_item = JSON.filter(lambda v: not isinstance(v, str) or v == "")
        with_bad_item = st.tuples(st.lists(st.text(min_size=1), max_size=3), bad_item).map(
            lambda t: [*t[0], t[1]]
        )
        return JSON.filter(lambda v: not isinstance(v, list)) | with_bad_item
    if kind == "dict":
        return JSON.filter(lambda v: not isinstance(v, dict))
    if kind == "bool":
        return JSON.filter(lambda v: not isinstance(v, bool))
    if kind == "id":
        long = st.text(min_size=129, max_size=200)
        return JSON.filter(lambda v: not isinstance(v, str)) | st.just("") | long
    if kind == "type":
        return JSON.filter(lambda v: not isinstance(v, str) or v not in T.KNOWN_TYPES)
    if kind == "control_fov":
        return JSON.filter(lambda v: v is not None)
    raise AssertionError(kind)


def _fields(d: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(path, kind, required) of every checked field of a valid envelope."""
    control = T.is_control(d["type"])
    out = [
        ("id", "id", True),
        ("type", "type", True),
        ("time", "float", True),
        ("source", "str", True),
        ("fov_id", "control_fov" if control else "fov_id", not control),
        ("body", "dict", False),
    ]
    out += [(f"body.{f.name}", f.kind, f.required) for f in T.BODY_SPECS[d["type"]]]
    return out


@st.composite
def mutated(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid envelope with one field dropped (if required) or made wrong."""
    d = copy.deepcopy(draw(st.sampled_from(VALID)))
    fields = _fields(d)
    path, kind, required = draw(st.sampled_from(fields))
    parent, key = (d["body"], path[5:]) if path.startswith("body.") else (d, path)
    if required and draw(st.booleans()):
        parent.pop(key, None)
    else:
        parent[key] = draw(_wrong_for(kind))
    return d, path


def _encode(d: dict[str, Any], form: str) -> Any:
    if form == "dict":
        return d
    text = json.dumps(d)
    return text if form == "str" else text.encode()


def _assert_clean_rejection(raw: Any) -> EventError:
    with pytest.raises(EventError) as info:
        parse_event(raw)
    err = info.value
    assert err.reason
    assert not err.reason.startswith("internal")
    assert str(err)
    return err


SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))


@settings(SETTINGS, max_examples=1000)
@given(mutated(), st.sampled_from(["dict", "str", "bytes"]))
def test_mutated_envelopes_rejected(case: tuple[dict[str, Any], str], form: str) -> None:
    d, path = case
    err = _assert_clean_rejection(_encode(d, form))
    assert err.field is not None
    assert err.field == path or err.field.startswith(path)


@settings(SETTINGS, max_examples=300)
@given(st.sampled_from(VALID), st.dictionaries(st.text(max_size=10), JSON, min_size=1, max_size=3))
def test_extra_envelope_fields_rejected(d: dict[str, Any], extra: dict[str, Any]) -> None:
    d = {**d, **{k: v for k, v in extra.items() if k not in d}}
    if len(d) > 6:
        _assert_clean_rejection(json.dumps(d))


@SETTINGS
@given(JSON)
def test_random_json_rejected(value: Any) -> None:
    _assert_clean_rejection(json.dumps(value))
    _assert_clean_rejection(value)


@settings(SETTINGS, max_examples=900)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_random_bytes_and_text_rejected(raw: bytes | str) -> None:
    _assert_clean_rejection(raw)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(VALID), st.integers(0, 1000), st.sampled_from(["dict", "str", "bytes"]))
def test_oversize_rejected(d: dict[str, Any], extra: int, form: str) -> None:
    d = copy.deepcopy(d)
    d["source"] = "x" * (MAX_BYTES + extra)
    err = _assert_clean_rejection(_encode(d, form))
    assert "more than the limit" in err.reason


def _ranged_fields() -> list[tuple[str, Any]]:
    """(type, spec) of every numeric body field the observatory sends."""
    return [
        (etype, f)
        for etype, fields in T.INBOUND_SPECS.items()
        for f in fields
        if f.kind in ("float", "int") and f.check is not None
    ]


RANGES = {
    (T.NEXT_VISIT, "mjd"): (40587.0, 88069.0, False),
    (T.NEXT_VISIT, "ra"): (0.0, 360.0, True),
    (T.NEXT_VISIT, "dec"): (-90.0, 90.0, False),
    (T.NEXT_VISIT, "seeing"): (0.0, 20.0, False),
    (T.NEXT_VISIT, "radius"): (0.0, T.MAX_FOV_RADIUS_DEG, False),
    (T.NEXT_VISIT, "exposure_time"): (0.0, 3600.0, False),
    (T.DIASOURCES_READY, "match_radius"): (0.0, T.MAX_MATCH_RADIUS_ARCSEC, False),
    (T.DIASOURCES_READY, "n_sources"): (0, 10**8, False),
}
"""Every ranged body field: low end, high end, and whether the high end is open."""


def test_every_ranged_field_is_covered() -> None:
    assert {(e, f.name) for e, f in _ranged_fields()} == set(RANGES)


@settings(SETTINGS, max_examples=400)
@given(st.sampled_from(sorted(RANGES)), st.data())
def test_body_field_ranges(key: tuple[str, str], data: st.DataObject) -> None:
    etype, name = key
    lo, hi, hi_open = RANGES[key]
    is_int = isinstance(lo, int) and isinstance(hi, int)
    span = hi - lo
    if is_int:
        inside = st.integers(lo, hi - 1 if hi_open else hi)
        outside = st.integers(hi + 1, hi + 10**9) | st.integers(lo - 10**9, lo - 1)
    else:
        low_open = name in ("seeing", "radius", "match_radius")
        inside = st.floats(lo, hi, exclude_min=low_open, exclude_max=hi_open)
        outside = st.floats(hi, hi + 1e6 * span, exclude_min=not hi_open) | st.floats(
            lo - 1e6 * span, lo, exclude_max=not low_open
        )
    ok = data.draw(inside)
    body = {**VALID_BODIES[etype][0], name: ok}
    assert parse_event(envelope(etype, body)).body[name] == ok
    bad = data.draw(outside)
    with pytest.raises(EventError) as info:
        parse_event(envelope(etype, {**VALID_BODIES[etype][0], name: bad}))
    assert info.value.field == f"body.{name}"


@settings(SETTINGS, max_examples=200)
@given(st.sampled_from(VALID), st.text(min_size=1, max_size=20))
def test_unknown_body_keys_are_named(d: dict[str, Any], key: str) -> None:
    known = {f.name for f in T.BODY_SPECS[d["type"]]}
    if key in known:
        return
    d = copy.deepcopy(d)
    d["body"][key] = 1
    err = _assert_clean_rejection(d)
    assert err.field is not None and err.field.startswith("body.")
    assert "unknown field" in err.reason
