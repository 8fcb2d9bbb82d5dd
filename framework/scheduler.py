"""The scheduler: which executions run, and when, with no I/O and no clock.

It admits executions up to the cap, keeps the ordered section, checks wait
deadlines, expires orphaned events and drains on shutdown. The master feeds it
small typed inputs (times included) and carries out the instructions it
returns, as dask's worker state machine does.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from framework.config import PipelineConfig
from framework.execution import (
    Abort,
    Admitted,
    EventArrived,
    Execution,
    ExecutionInput,
    Failure,
    Finish,
    LeaveSection,
    Phase,
    RequestEntry,
    Start,
    Tick,
)
from framework.execution import Instruction as StepInstruction
from framework.section import OrderedSection

ORPHAN_SWEEP_S = 5.0
"""How often orphaned events are checked for expiry, s."""


# Inputs -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """A new event was journaled at `seq`: its type and FOV (None for control events)."""

    type: str
    fov_id: int | None
    now: float
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Clock:
    """Time passed (monotonic seconds)."""

    now: float


@dataclass(frozen=True, slots=True)
class Begin:
    """Start an execution for FOV `key`, whose starting event was fetched.

    ``queued`` maps the types of its events already journaled to their
    journal positions, ``expired`` the waits whose expiry is journaled;
    `resources` are what it may touch in the ordered section (None:
    everything); ``start_seq`` is the journal position of its starting event.
    """

    key: int
    queued: Mapping[str, int]
    resources: frozenset[Hashable] | None
    now: float
    start_seq: int = 0
    expired: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Feed:
    """An input for the execution of FOV `key`."""

    key: int
    input: ExecutionInput


@dataclass(frozen=True, slots=True)
class Drain:
    """Take no new executions; stop once those in flight have ended."""


SchedulerInput = Accepted | Clock | Begin | Feed | Drain


# Instructions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """Carry out `instruction` for the execution of FOV `key`."""

    key: int
    instruction: StepInstruction


@dataclass(frozen=True, slots=True)
class FetchStarts:
    """Read up to `room` starting events from the journal, skipping FOVs in `running`."""

    room: int
    running: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ExpireOrphans:
    """These FOVs' events waited longer than the orphan timeout for a start."""

    fov_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Stop:
    """Draining is complete: nothing is in flight."""


SchedulerInstruction = Step | FetchStarts | ExpireOrphans | Stop


@dataclass
class Scheduler:
    """Admission, the cap, the ordered section, deadlines and orphans.

    Parameters
    ----------
    config : PipelineConfig
        Stages, waits, the starting event type, the cap and the section.
    n_slices : int
        Slices that answer each barrier.
    """

    config: PipelineConfig
    n_slices: int
    executions: dict[int, Execution] = field(default_factory=dict)
    draining: bool = False
    orphans: dict[int, float] = field(default_factory=dict)
    _section: OrderedSection | None = None
    _want_admit: bool = True
    _next_sweep: float = 0.0
    _stopped: bool = False

    def __post_init__(self) -> None:
        if self.config.ordered is not None:
            self._section = OrderedSection()

    @property
    def room(self) -> int:
        """Executions that may still be admitted."""
        return max(0, self.config.max_in_flight - len(self.executions))

    def behind(self, key: int) -> list[int]:
        """The earlier executions that `key` waits for at the ordered section."""
        return [] if self._section is None else self._section.blocking(key)

    def handle(self, inp: SchedulerInput) -> list[SchedulerInstruction]:
        """Apply one input; return what the master must carry out, in order."""
        match inp:
            case Accepted(type=t, fov_id=fov, now=now, seq=seq):
                return self._accepted(t, fov, now, seq)
            case Clock(now=now):
                return self._clock(now)
            case Begin():
                return self._begin(inp)
            case Feed(key=key, input=ev):
                return self._feed(key, ev)
            case Drain():
                self.draining = True
                out: list[SchedulerInstruction] = []
                for key in list(self.executions):
                    out += self._feed(key, None)
                return out + self._maybe_stop()
        raise TypeError(f"unknown scheduler input {inp!r}")

    # -- inputs -------------------------------------------------------------------

    def _accepted(
        self, etype: str, fov: int | None, now: float, seq: int
    ) -> list[SchedulerInstruction]:
        if etype == self.config.start:
            self._want_admit = True
            return []
        if fov is None:
            return []
        if fov in self.executions:
            return self._feed(fov, EventArrived(etype, seq))
        self.orphans.setdefault(fov, now)
        return []

    def _clock(self, now: float) -> list[SchedulerInstruction]:
        out: list[SchedulerInstruction] = []
        for key, ex in list(self.executions.items()):
            if ex.phase is Phase.WAITING and ex.deadline is not None and now >= ex.deadline:
                out += self._feed(key, Tick(now))
        if now >= self._next_sweep:
            self._next_sweep = now + ORPHAN_SWEEP_S
            limit = now - self.config.runtime.orphan_timeout
            old = tuple(sorted(f for f, t in self.orphans.items() if t <= limit))
            if old:
                for f in old:
                    del self.orphans[f]
                out.append(ExpireOrphans(old))
        if self._want_admit and not self.draining and self.room:
            self._want_admit = False
            out.append(FetchStarts(self.room, tuple(self.executions)))
        return out + self._maybe_stop()

    def _begin(self, b: Begin) -> list[SchedulerInstruction]:
        if b.key in self.executions:
            raise RuntimeError(f"execution {b.key} is already running")
        ex = Execution(
            key=b.key,
            stage_names=tuple(s.name for s in self.config.stages),
            waits=tuple(s.wait for s in self.config.stages),
            n_slices=self.n_slices,
            section=self.config.ordered_range,
            start_seq=b.start_seq,
        )
        ex.received.update(b.queued)
        for etype, seq in b.expired.items():
            ex.received.setdefault(etype, seq)
            ex.skipped_waits.append(etype)
        self.executions[b.key] = ex
        self.orphans.pop(b.key, None)
        if self._section is not None:
            self._section.add(b.key, b.resources)
        return self._feed(b.key, Start(b.now))

    def _feed(self, key: int, first: ExecutionInput | None) -> list[SchedulerInstruction]:
        """Run an input through an execution, following what the section decides at once.

        While draining, an execution that waits for an event is ended at once,
        as retriable: the next run takes it up again.
        """
        out: list[SchedulerInstruction] = []
        work: list[tuple[int, ExecutionInput | None]] = [(key, first)]
        while work:
            k, ev = work.pop(0)
            ex = self.executions.get(k)
            if ex is None or (isinstance(ev, Admitted) and ex.phase is not Phase.GATED):
                continue
            if ev is None:
                ev = self._drained(ex)
                if ev is None:
                    continue
            for instr in ex.handle(ev):
                match instr:
                    case RequestEntry() if self._section is None:
                        work.append((k, Admitted()))
                    case RequestEntry():
                        assert self._section is not None
                        if self._section.may_enter(k):
                            work.append((k, Admitted()))
                    case LeaveSection():
                        assert self._section is not None
                        self._section.leave(k)
                        work += self._admissible()
                    case Finish():
                        del self.executions[k]
                        if self._section is not None:
                            self._section.remove(k)
                            work += self._admissible()
                        self._want_admit = True
                        out.append(Step(k, instr))
                    case _:
                        out.append(Step(k, instr))
            if self.draining and ex.phase is Phase.WAITING:
                work.append((k, None))
            if self._section is not None and k in self.executions:
                key = ex.order_key
                if key is not None and self._section.key(k) is None:
                    self._section.ready(k, key)
                    if ex.phase is Phase.GATED and self._section.may_enter(k):
                        work.append((k, Admitted()))
        return out

    @staticmethod
    def _drained(ex: Execution) -> Abort | None:
        if ex.phase is not Phase.WAITING:
            return None
        wait = ex.waits[ex.stage]
        assert wait is not None
        why = f"the pipeline shut down while it waited for {wait.event}"
        return Abort(Failure(ex.stage_name, "wait", 0, why, retriable=True))

    def _admissible(self) -> list[tuple[int, ExecutionInput]]:
        assert self._section is not None
        return [
            (k, Admitted())
            for k, ex in self.executions.items()
            if ex.phase is Phase.GATED and self._section.may_enter(k)
        ]

    def _maybe_stop(self) -> list[SchedulerInstruction]:
        if self.draining and not self.executions and not self._stopped:
            self._stopped = True
            return [Stop()]
        return []
