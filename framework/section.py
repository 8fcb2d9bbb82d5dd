"""The ordered section: executions that share resources pass it in the order their data came.

An execution's order key is the journal position of the last event it needs
before the section (its starting event and the events its earlier stages wait
for, or the journaled expiry of a wait). The key is a function of the journal
alone, so an interrupted run resumed from its journal orders executions as an
uninterrupted one would. An execution still waiting for an event has no key
and holds nobody back: when its event comes, it is journaled after everything
before it, and the execution takes its turn from there.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class OrderedSection:
    """Admission to a run of stages that executions sharing resources take in turn.

    An execution may enter once it has a key and no other execution whose
    resources intersect its own, with a smaller key, has yet to leave the
    section (or end). ``None`` resources intersect everything. The outcome
    equals running those executions one at a time, in key order.
    """

    _resources: dict[int, frozenset[Hashable] | None] = field(default_factory=dict)
    _keys: dict[int, int] = field(default_factory=dict)
    _left: set[int] = field(default_factory=set)

    def add(self, fov: int, resources: frozenset[Hashable] | None) -> None:
        """Register an execution; it has no key until its data is all in."""
        self._resources[fov] = resources

    def ready(self, fov: int, key: int) -> None:
        """The execution's data is all in; `key` is its place in the order."""
        self._keys[fov] = key

    def leave(self, fov: int) -> None:
        """The execution has passed the section's last stage."""
        self._left.add(fov)

    def remove(self, fov: int) -> None:
        """The execution ended."""
        self._resources.pop(fov, None)
        self._keys.pop(fov, None)
        self._left.discard(fov)

    def key(self, fov: int) -> int | None:
        """The execution's order key, if it has one."""
        return self._keys.get(fov)

    def may_enter(self, fov: int) -> bool:
        """True if it has a key and no overlapping execution before it is still to pass."""
        if fov not in self._keys:
            return False
        return not self.blocking(fov)

    def blocking(self, fov: int) -> list[int]:
        """The executions `fov` waits for (for status and logs), in key order."""
        mine = self._resources[fov]
        key = self._keys.get(fov)
        out = []
        for other, theirs in self._resources.items():
            k = self._keys.get(other)
            if other == fov or k is None or other in self._left:
                continue
            if (key is None or (k, other) < (key, fov)) and (
                mine is None or theirs is None or not mine.isdisjoint(theirs)
            ):
                out.append(other)
        return sorted(out, key=lambda o: self._keys[o])
