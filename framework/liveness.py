"""Liveness of the Slices: which one has work in hand and has stopped answering."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Liveness:
    """Per Slice, the work in hand and when it last answered (monotonic seconds).

    A Slice answers its work items one at a time (background work aside, in
    order), so the time since it last answered (or since the oldest
    unanswered item was sent, if later) is how long it has gone without
    finishing anything. No clock is read here.

    Parameters
    ----------
    n_slices : int
    timeout : float
        Longer than this with work in hand is hung; 0 turns the check off.
    """

    n_slices: int
    timeout: float
    in_hand: list[int] = field(init=False)
    since: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.reset(0.0)

    def reset(self, now: float) -> None:
        """Nothing in hand anywhere, as of `now`."""
        self.in_hand = [0] * self.n_slices
        self.since = [now] * self.n_slices

    def sent(self, i: int, now: float) -> None:
        """A work item went to Slice `i`."""
        if self.in_hand[i] == 0:
            self.since[i] = now
        self.in_hand[i] += 1

    def answered(self, i: int, now: float) -> None:
        """Slice `i` answered one item."""
        self.in_hand[i] = max(0, self.in_hand[i] - 1)
        self.since[i] = now

    def heard(self, i: int, now: float) -> None:
        """Slice `i` said it is still at its work."""
        self.since[i] = now

    def hung(self, now: float) -> tuple[int, float] | None:
        """The first Slice hung as of `now`, and since when it has been silent."""
        if self.timeout <= 0:
            return None
        for i in range(self.n_slices):
            if self.in_hand[i] and now - self.since[i] > self.timeout:
                return i, self.since[i]
        return None
