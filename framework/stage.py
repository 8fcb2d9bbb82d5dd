"""The Stage: the unit of work a pipeline is made of, and the contexts its hooks see."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from events.envelope import Event
    from framework.status import Board


@dataclass(frozen=True)
class NoConfig:
    """Config of a stage that takes none."""


@dataclass
class Scatter:
    """A `preprocess` result that gives each Slice its own payload.

    Parameters
    ----------
    items : list
        One payload per Slice, in Slice order.
    """

    items: list[Any]


@dataclass(frozen=True)
class Later:
    """A `preprocess` result whose work finishes in another thread.

    The execution waits for ``future`` without holding up the master's loop:
    its result is then the payload, and its exception fails the execution as
    the hook's own would. Master hooks are not thread-safe: the thread must
    not call ``ctx.emit`` or touch other executions.

    Parameters
    ----------
    future : concurrent.futures.Future
        The work, e.g. from ``ThreadPoolExecutor.submit``.
    """

    future: Future[Any]


@dataclass(frozen=True)
class Background:
    """A `process` result whose slow part runs beside the Slice's other work.

    ``work()`` runs on the Slice's background thread (one per Slice: works run
    one at a time, in the order they were returned, retried as `process` is)
    while the Slice goes on with other executions' items; then ``then(result)``
    runs on the Slice's own thread, in the same order, and what it returns is
    the Slice's result. An exception in either fails the item as one in
    `process` would. ``work`` must not touch what other hooks use (read from a
    database, say, into new arrays); ``then`` may.

    Parameters
    ----------
    work : callable
        ``work() -> T``, safe to run again after it raised.
    then : callable
        ``then(T) -> result``.
    """

    work: Callable[[], Any]
    then: Callable[[Any], Any]


@dataclass(frozen=True)
class EndExecution:
    """A `preprocess` result that ends the execution here, as done.

    The later stages do not run; `finish` runs on every rank as for any
    execution that is done.

    Parameters
    ----------
    reason : str
        Why, for the log and the outcome event.
    """

    reason: str


@dataclass
class RankContext:
    """What every hook can see of the process it runs in."""

    rank: int
    n_slices: int
    run_dir: Path
    log: logging.Logger | logging.LoggerAdapter
    board: Board
    shared: Any = None
    """What the pipeline's `setup` hook made: this rank's state for the night."""
    settings: Any = None
    """The pipeline's settings (its ``[settings]`` table), typed."""


@dataclass
class ExecutionContext(RankContext):
    """What a hook of one execution can see.

    ``key`` is the execution's FOV id; ``state`` is this rank's typed state of
    the execution, made by the pipeline's `execution_state` hook and freed when
    it ends; ``events`` holds the events received for it, by type;
    ``clipboard`` is an untyped store for pipelines that want one.
    """

    key: int = 0
    state: Any = None
    events: dict[str, Event] = field(default_factory=dict)
    clipboard: dict[str, Any] = field(default_factory=dict)

    @property
    def slice_index(self) -> int:
        """This Slice's index, 0..n_slices-1 (the master is -1)."""
        return self.rank - 1


@dataclass
class MasterContext(ExecutionContext):
    """Context of `preprocess`, `postprocess` and `finish` on the master."""

    emit: Any = None
    """``emit(type, body)`` publishes an outbound event for this execution."""
    counts: dict[str, int] = field(default_factory=dict)
    """Figures a stage adds to the execution's outcome event (``counts``)."""
    count: Any = None
    """``count(name, n)`` adds `n` to the pipeline's counter ``nightpipe_<name>_total``
    (`framework.metrics.Metrics.count`), e.g. ``count("alerts", 120)``."""
    shutdown: Any = None
    """``shutdown(reason)`` asks the pipeline to stop: no new executions, then exit."""


class Stage:
    """Base class of a pipeline stage.

    A subclass sets `ConfigClass` to a dataclass and overrides the hooks it
    needs. One instance lives on every rank for the whole night.
    """

    ConfigClass: ClassVar[type] = NoConfig

    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config

    def setup(self, ctx: RankContext) -> None:
        """Once per rank, before any execution."""

    def preprocess(self, ctx: MasterContext) -> Any:
        """On the master, serial.

        Returns the payload for the Slices, a `Scatter`, a `Later`, or an
        `EndExecution` to end the execution here as done.
        """
        return None

    def process(self, ctx: ExecutionContext, payload: Any) -> Any:
        """On every Slice, in parallel. Returns this Slice's result, or a `Background`."""
        return None

    def postprocess(self, ctx: MasterContext, results: list[Any]) -> None:
        """On the master, after the barrier; `results` holds every Slice's, in Slice order."""

    def finish(self, ctx: ExecutionContext, ok: bool) -> None:
        """On every rank when the execution ends, done (`ok`) or failed."""

    def shutdown(self, ctx: RankContext) -> None:
        """Once per rank, at the end of the night."""
