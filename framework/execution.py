"""One execution (one visit through the pipeline) as a state machine, free of I/O.

The scheduler feeds it small typed inputs and carries out the instructions it
returns. Nothing here sends, sleeps or reads a clock: times come in with the
inputs. Every input is kept in a short transition log, which a failure carries.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from dataclasses import dataclass, field

from framework.config import WaitSpec

TRANSITION_LOG = 24
"""Transitions an execution remembers for its failure record."""


class Phase(enum.Enum):
    """Where an execution stands within its current stage."""

    WAITING = "waiting"  # for an event, with a deadline
    GATED = "gated"  # for its turn in the ordered section
    PREPROCESS = "preprocess"
    DISPATCHED = "dispatched"  # process running on the Slices, barrier pending
    POSTPROCESS = "postprocess"
    DONE = "done"
    FAILED = "failed"


TERMINAL = (Phase.DONE, Phase.FAILED)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an execution failed: where, the error, and how it got there."""

    stage: str
    hook: str
    rank: int
    error: str
    traceback: str = ""
    transitions: tuple[str, ...] = field(default=(), compare=False)
    retriable: bool = False
    """A passing fault (a database outage, a shutdown): the next run retries the execution."""

    def describe(self) -> str:
        """One line naming stage, hook and rank."""
        return f"stage {self.stage!r} hook {self.hook} on rank {self.rank}: {self.error}"


def describe_exception(exc: BaseException) -> str:
    """``Type: message``, the form an error takes in logs and outcome events."""
    return f"{type(exc).__name__}: {exc}"


# Inputs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Begin at the first stage."""

    now: float


@dataclass(frozen=True, slots=True)
class EventArrived:
    """An event of `type` arrived for this execution, journaled at position `seq`."""

    type: str
    seq: int = 0


@dataclass(frozen=True, slots=True)
class WaitExpired:
    """The expiry of the wait for `type` is journaled, at `seq`: go on without it."""

    type: str
    seq: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; deadlines are checked."""

    now: float


@dataclass(frozen=True, slots=True)
class Admitted:
    """The ordered section lets this execution in."""


@dataclass(frozen=True, slots=True)
class PreprocessDone:
    """The master ran `preprocess` of the current stage."""


@dataclass(frozen=True, slots=True)
class SliceReplied:
    """A Slice answered for `stage`; `failure` is set if its hook raised."""

    stage: int
    slice: int
    failure: Failure | None = None


@dataclass(frozen=True, slots=True)
class PostprocessDone:
    """The master ran `postprocess` of the current stage."""

    now: float


@dataclass(frozen=True, slots=True)
class HookFailed:
    """A master hook of the current stage raised."""

    failure: Failure


@dataclass(frozen=True, slots=True)
class Ended:
    """A `preprocess` ended the execution early, as done (`reason` says why)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Abort:
    """Something outside the execution ends it as failed: a shutdown, a hung Slice."""

    failure: Failure


ExecutionInput = (
    Start
    | EventArrived
    | WaitExpired
    | Tick
    | Admitted
    | PreprocessDone
    | SliceReplied
    | PostprocessDone
    | HookFailed
    | Ended
    | Abort
)


# Instructions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestEntry:
    """Ask the ordered section for entry at `stage`."""

    stage: int


@dataclass(frozen=True, slots=True)
class RecordExpiry:
    """Journal that the wait for `event` ran out (policy ``continue``); `WaitExpired` follows."""

    event: str


@dataclass(frozen=True, slots=True)
class LeaveSection:
    """The execution has passed the ordered section's last stage."""


@dataclass(frozen=True, slots=True)
class RunPreprocess:
    """Run `preprocess` of `stage` on the master."""

    stage: int


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send `process` of `stage` to every Slice."""

    stage: int


@dataclass(frozen=True, slots=True)
class RunPostprocess:
    """Run `postprocess` of `stage` on the master."""

    stage: int


@dataclass(frozen=True, slots=True)
class Finish:
    """The execution ended; `failure` is None when done.

    ``skipped_waits`` names the events it went on without; ``ended_early``
    says why a stage ended it before the last.
    """

    failure: Failure | None
    skipped_waits: tuple[str, ...] = ()
    ended_early: str | None = None


Instruction = (
    RequestEntry | RecordExpiry | LeaveSection | RunPreprocess | Dispatch | RunPostprocess | Finish
)


@dataclass
class Execution:
    """State of one execution.

    Parameters
    ----------
    key : int
        FOV id.
    stage_names : tuple of str
        The pipeline's stages, in order.
    waits : tuple of WaitSpec or None
        Per stage, the event it first waits for.
    n_slices : int
        Slices that answer each barrier.
    section : (int, int) or None
        First and last stage index of the ordered section.
    start_seq : int
        Journal position of the starting event.
    """

    key: int
    stage_names: tuple[str, ...]
    waits: tuple[WaitSpec | None, ...]
    n_slices: int
    section: tuple[int, int] | None = None
    start_seq: int = 0
    stage: int = 0
    phase: Phase = Phase.WAITING
    deadline: float | None = None
    received: dict[str, int] = field(default_factory=dict)
    """Journal position of each event received (or of its wait's expiry), by type."""
    pending: set[int] = field(default_factory=set)
    slice_failures: list[Failure] = field(default_factory=list)
    failure: Failure | None = None
    skipped_waits: list[str] = field(default_factory=list)
    ended_early: str | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=TRANSITION_LOG))

    @property
    def stage_name(self) -> str:
        """Name of the current stage."""
        return self.stage_names[self.stage]

    @property
    def terminal(self) -> bool:
        """True once done or failed."""
        return self.phase in TERMINAL

    @property
    def before_section(self) -> tuple[str, ...]:
        """The events the stages before the ordered section wait for."""
        if self.section is None:
            return ()
        return tuple(w.event for w in self.waits[: self.section[0]] if w is not None)

    @property
    def order_key(self) -> int | None:
        """Journal position of the last event needed before the section; None until all are in."""
        if any(e not in self.received for e in self.before_section):
            return None
        return max([self.start_seq, *(self.received[e] for e in self.before_section)])

    @property
    def in_section(self) -> bool:
        """True from admission to the section until it has been left."""
        if self.section is None or self.terminal:
            return False
        lo, hi = self.section
        return lo <= self.stage <= hi and self.phase is not Phase.GATED

    def handle(self, ev: ExecutionInput) -> list[Instruction]:
        """Apply one input; return what the scheduler must do next."""
        if self.terminal:
            return []
        before = f"{self.phase.value}@{self.stage_name}"
        out = self._handle(ev)
        self.log.append(f"{type(ev).__name__}: {before} -> {self.phase.value}@{self.stage_name}")
        if self.failure is not None and self.phase is Phase.FAILED and not self.failure.transitions:
            self.failure = dataclasses.replace(self.failure, transitions=tuple(self.log))
            out = [Finish(self.failure) if isinstance(i, Finish) else i for i in out]
        return out

    def _handle(self, ev: ExecutionInput) -> list[Instruction]:
        match ev:
            case Start(now):
                return self._enter(0, now)
            case EventArrived(type=t, seq=seq):
                self.received.setdefault(t, seq)
                if self._waiting_for(t):
                    return self._after_wait()
                return []
            case WaitExpired(type=t, seq=seq):
                self.received.setdefault(t, seq)
                self.skipped_waits.append(t)
                if self._waiting_for(t):
                    return self._after_wait()
                return []
            case Tick(now):
                if (
                    self.phase is Phase.WAITING
                    and self.deadline is not None
                    and now >= self.deadline
                ):
                    return self._timed_out()
                return []
            case Admitted():
                self._expect(Phase.GATED)
                self.phase = Phase.PREPROCESS
                return [RunPreprocess(self.stage)]
            case PreprocessDone():
                self._expect(Phase.PREPROCESS)
                self.phase = Phase.DISPATCHED
                self.pending = set(range(self.n_slices))
                self.slice_failures = []
                return [Dispatch(self.stage)]
            case SliceReplied(stage=s, slice=i, failure=f):
                if s != self.stage or self.phase is not Phase.DISPATCHED or i not in self.pending:
                    raise RuntimeError(
                        f"execution {self.key}: unexpected reply from slice {i} for stage {s}"
                    )
                self.pending.discard(i)
                if f is not None:
                    self.slice_failures.append(f)
                if self.pending:
                    return []
                if self.slice_failures:
                    return self._fail(min(self.slice_failures, key=lambda x: x.rank))
                self.phase = Phase.POSTPROCESS
                return [RunPostprocess(self.stage)]
            case PostprocessDone(now=now):
                self._expect(Phase.POSTPROCESS)
                out: list[Instruction] = []
                if self.section is not None and self.stage == self.section[1]:
                    out.append(LeaveSection())
                if self.stage + 1 == len(self.stage_names):
                    self.phase = Phase.DONE
                    return [*out, self._done()]
                return [*out, *self._enter(self.stage + 1, now)]
            case Ended(reason=why):
                self._expect(Phase.PREPROCESS)
                self.ended_early = why
                self.phase = Phase.DONE
                return [self._done()]
            case HookFailed(failure=f) | Abort(failure=f):
                return self._fail(f)
        raise TypeError(f"unknown execution input {ev!r}")

    def _waiting_for(self, event: str) -> bool:
        wait = self.waits[self.stage]
        return self.phase is Phase.WAITING and wait is not None and wait.event == event

    def _expect(self, phase: Phase) -> None:
        if self.phase is not phase:
            raise RuntimeError(
                f"execution {self.key}: expected {phase.value}, in {self.phase.value}"
            )

    def _enter(self, stage: int, now: float) -> list[Instruction]:
        self.stage = stage
        wait = self.waits[stage]
        if wait is not None and wait.event not in self.received:
            self.phase = Phase.WAITING
            self.deadline = now + wait.timeout
            return []
        return self._after_wait()

    def _after_wait(self) -> list[Instruction]:
        self.deadline = None
        if self.section is not None and self.stage == self.section[0]:
            self.phase = Phase.GATED
            return [RequestEntry(self.stage)]
        self.phase = Phase.PREPROCESS
        return [RunPreprocess(self.stage)]

    def _timed_out(self) -> list[Instruction]:
        wait = self.waits[self.stage]
        assert wait is not None
        if wait.policy == "continue":
            self.deadline = None
            return [RecordExpiry(wait.event)]
        return self._fail(
            Failure(
                stage=self.stage_name,
                hook="wait",
                rank=0,
                error=f"timed out after {wait.timeout:g} s waiting for {wait.event}",
            )
        )

    def _done(self) -> Finish:
        return Finish(None, tuple(self.skipped_waits), self.ended_early)

    def _fail(self, failure: Failure) -> list[Instruction]:
        self.phase = Phase.FAILED
        self.failure = failure
        self.deadline = None
        return [Finish(failure)]
