"""Messages between the master and the Slices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from framework.execution import Failure


@dataclass(frozen=True)
class Work:
    """Run `process` of stage `stage` for execution `key` with `payload`."""

    key: int
    stage: int
    payload: Any
    events: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """A Slice's answer to one `Work`."""

    key: int
    stage: int
    slice: int
    value: Any
    failure: Failure | None
    board: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class Release:
    """Execution `key` ended: run `finish` and free its clipboard."""

    key: int
    ok: bool
    events: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ready:
    """A Slice ran `setup` (or failed to: `failure`)."""

    slice: int
    failure: Failure | None
    board: dict[str, Any]


@dataclass(frozen=True)
class Alive:
    """A Slice is still at its work (retrying it after a passing fault): its board."""

    slice: int
    board: dict[str, Any]


@dataclass(frozen=True)
class Shutdown:
    """Run `shutdown` and exit."""


@dataclass(frozen=True)
class Bye:
    """A Slice ran `shutdown` and is leaving."""

    slice: int
    board: dict[str, Any]
