"""The ordered section: executions that share resources pass it in start order."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class OrderedSection:
    """Admission to a run of stages that executions sharing resources take in turn.

    An execution may enter only when every earlier execution whose resources
    intersect its own has left the section (or ended). ``None`` resources
    intersect everything. The outcome equals running those executions one at
    a time, in start order.
    """

    _order: dict[int, frozenset[Hashable] | None] = field(default_factory=dict)
    _left: set[int] = field(default_factory=set)

    def add(self, key: int, resources: frozenset[Hashable] | None) -> None:
        """Register an execution, in start order."""
        self._order[key] = resources

    def leave(self, key: int) -> None:
        """The execution has passed the section's last stage."""
        self._left.add(key)

    def remove(self, key: int) -> None:
        """The execution ended."""
        self._order.pop(key, None)
        self._left.discard(key)

    def may_enter(self, key: int) -> bool:
        """True if no earlier, overlapping execution is still before or in the section."""
        mine = self._order[key]
        for other, theirs in self._order.items():
            if other == key:
                return True
            if other in self._left:
                continue
            if mine is None or theirs is None or not mine.isdisjoint(theirs):
                return False
        raise KeyError(key)

    def blocking(self, key: int) -> list[int]:
        """The earlier executions `key` waits for (for status and logs)."""
        mine = self._order[key]
        out = []
        for other, theirs in self._order.items():
            if other == key:
                break
            if other not in self._left and (
                mine is None or theirs is None or not mine.isdisjoint(theirs)
            ):
                out.append(other)
        return out
