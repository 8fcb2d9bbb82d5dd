"""The event envelope: one shape for every event nightpipe receives or sends."""

from __future__ import annotations

import json
import time as _time
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One event.

    Parameters
    ----------
    id : str
        Unique id; a second event with the same id is a duplicate.
    type : str
        Dotted type, e.g. ``telescope.next_visit``.
    time : float
        When it was sent, seconds since the Unix epoch (UTC).
    source : str
        Who sent it.
    fov_id : int or None
        The field of view (visit) it belongs to; None for control events.
    body : dict
        Type-specific fields.
    """

    id: str
    type: str
    time: float
    source: str
    fov_id: int | None
    body: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(
        cls,
        type: str,
        fov_id: int | None,
        body: dict[str, Any] | None = None,
        source: str = "nightpipe",
        time: float | None = None,
        id: str | None = None,
    ) -> Event:
        """Make an event with a fresh id and the current time."""
        return cls(
            id=id or uuid.uuid4().hex,
            type=type,
            time=_time.time() if time is None else time,
            source=source,
            fov_id=fov_id,
            body=dict(body or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a plain dict, as it goes on the wire."""
        return {
            "id": self.id,
            "type": self.type,
            "time": self.time,
            "source": self.source,
            "fov_id": self.fov_id,
            "body": self.body,
        }

    def to_json(self) -> str:
        """The envelope as one line of JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """Build from a dict already validated (see `events.validate`)."""
        return cls(
            id=d["id"],
            type=d["type"],
            time=float(d["time"]),
            source=d["source"],
            fov_id=d.get("fov_id"),
            body=dict(d.get("body") or {}),
        )
