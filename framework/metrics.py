"""Prometheus metrics of a pipeline's master, on a private registry and a loopback address.

The master calls plain methods (`Metrics.event_accepted`, `Metrics.execution_done`,
`Metrics.slice_board`, ...) and `Metrics.start_server` serves them for scraping. Nothing
here reads a clock or knows what the stages compute. Names follow Prometheus practice:
the ``nightpipe_`` prefix, base units (seconds), ``_total`` on counters, and only
low-cardinality labels (a stage name, a Slice rank; never an execution key).

The Slices' figures reach the master with their replies: each `Board` snapshot carries the
durations its stages recorded with `framework.status.Board.observe` (say ``db_read``) and
the Slice's busy time, and `Metrics.slice_board` turns them into histogram observations
and counters. Nothing is scraped from a Slice.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

from framework.status import OBSERVED

NAMESPACE = "nightpipe"
DEFAULT_ADDRESS = "127.0.0.1:0"
DEFAULT_NOUN = "executions"
DEFAULT_DURATIONS = ("db_read", "db_write")
"""Durations every master exports, observed or not: database reads and writes."""

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300)
QUEUE_BUCKETS = (0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)
_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")


class MetricsError(ValueError):
    """A metrics setting or name that cannot be used; the message says which."""


def parse_address(text: str, where: str = "metrics address") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) into a host and a port.

    Parameters
    ----------
    text : str
        The address; port 0 asks for a free one.
    where : str
        Names the setting in error messages.

    Raises
    ------
    MetricsError
        When `text` has no port, a port outside 0..65535, or a host that is
        not an IP address.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise MetricsError(f"{where}: expected HOST:PORT (e.g. 127.0.0.1:9108), got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise MetricsError(f"{where}: host {host!r} is not an IP address (in {text!r})") from None
    if not port.isdigit() or int(port) > 65535:
        raise MetricsError(f"{where}: port {port!r} is not a number in 0..65535 (in {text!r})")
    return host, int(port)


def check_name(name: str, what: str = "metric name") -> str:
    """`name` if it is a valid metric name part (lower case, digits, ``_``), else raise."""
    if not _NAME.match(name):
        raise MetricsError(f"{what} {name!r}: use lower case letters, digits and '_'")
    return name


def processing_latency(
    timings: Mapping[str, float], stages: Sequence[str], first: str | None = None
) -> float:
    """An execution's own work: the sum of its stage timings from stage `first` on.

    Waits for events, for a turn in the ordered section and for admission are
    not in any stage timing, so they are not in this sum.

    Parameters
    ----------
    timings : mapping of str to float
        Seconds per stage (a ``total`` entry, if any, is ignored).
    stages : sequence of str
        The pipeline's stage names, in order.
    first : str, optional
        The stage the latency counts from, typically the one that waits for the
        triggering event; all stages by default.

    Raises
    ------
    MetricsError
        When `first` is not one of `stages`.
    """
    if first is None:
        start = 0
    elif first in stages:
        start = list(stages).index(first)
    else:
        raise MetricsError(f"processing latency from stage {first!r}: no such stage in {stages}")
    return float(sum(timings.get(name, 0.0) for name in stages[start:]))


class Metrics:
    """The metrics of one master, on a registry of its own.

    Parameters
    ----------
    noun : str
        What an execution is called in metric names: ``visits`` gives
        ``nightpipe_visits_done_total``.
    stages : sequence of str
        Stage names, so that every stage's series exists from the start.
    durations : iterable of str
        Names of durations the ranks observe (`observe`, `slice_board`); each is
        exported as ``nightpipe_<name>_duration_seconds``. More are added on
        first use.
    pipeline : str, optional
        Exported as ``nightpipe_pipeline_info{name=...}``.
    """

    def __init__(
        self,
        noun: str = DEFAULT_NOUN,
        stages: Sequence[str] = (),
        durations: Iterable[str] = DEFAULT_DURATIONS,
        pipeline: str | None = None,
    ) -> None:
        ns = NAMESPACE
        check_name(noun, "metrics noun")
        self.noun = noun
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._lock = threading.RLock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.address: str | None = None

        self.done = Counter(f"{ns}_{noun}_done", f"{noun} that ended done", registry=r)
        self.failed = Counter(
            f"{ns}_{noun}_failed", f"{noun} that ended failed, by stage", ["stage"], registry=r
        )
        self.in_flight = Gauge(f"{ns}_{noun}_in_flight", f"{noun} in flight", registry=r)
        self.queued = Gauge(
            f"{ns}_{noun}_queued", f"{noun} whose start event waits in the journal", registry=r
        )
        self.events = {
            kind: Counter(f"{ns}_events_{kind}", doc, registry=r)
            for kind, doc in (
                ("accepted", "events accepted and journaled"),
                ("rejected", "events rejected (in the dead-letter log)"),
                ("duplicate", "events whose id was already journaled"),
                ("expired", "journaled events expired unused"),
            )
        }
        self.slices = Gauge(f"{ns}_slices", "Slices that reported", registry=r)
        self.slices_busy = Gauge(f"{ns}_slices_busy", "Slices with work in hand now", registry=r)
        self.slice_busy_seconds = Counter(
            f"{ns}_slice_busy_seconds", "time a Slice spent in stages", ["slice"], registry=r
        )
        self.stage_seconds = Histogram(
            f"{ns}_stage_duration_seconds",
            "one stage of one execution, preprocess to postprocess",
            ["stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            f"{ns}_processing_latency_seconds",
            "an execution's own work from its triggering event to its end (no queue wait)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{ns}_queue_wait_seconds",
            "from an execution's start event to its admission (waiting in the journal)",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        if pipeline is not None:
            Info(f"{ns}_pipeline", "the pipeline served", registry=r).info({"name": pipeline})
        for name in stages:
            self.stage_seconds.labels(stage=name)
            self.failed.labels(stage=name)
        self._durations: dict[str, Histogram] = {}
        self._counters: dict[str, Counter] = {}
        for name in durations:
            self._duration(name)
        self._reported: set[int] = set()
        self._busy_seconds: dict[int, float] = {}
        self._seen: dict[Hashable, int] = {}

    # -- what the master calls -------------------------------------------------------------

    def event_accepted(self, n: int = 1) -> None:
        """`n` events were journaled."""
        self.events["accepted"].inc(n)

    def event_rejected(self, n: int = 1) -> None:
        """`n` events were rejected."""
        self.events["rejected"].inc(n)

    def event_duplicate(self, n: int = 1) -> None:
        """`n` events repeated an id already journaled."""
        self.events["duplicate"].inc(n)

    def event_expired(self, n: int = 1) -> None:
        """`n` journaled events expired unused."""
        self.events["expired"].inc(n)

    def execution_done(
        self,
        stage_timings: Mapping[str, float],
        latency: float | None = None,
        queue_wait: float | None = None,
    ) -> None:
        """An execution ended done.

        Parameters
        ----------
        stage_timings : mapping of str to float
            Seconds per stage; a ``total`` entry is not a stage and is ignored.
        latency : float, optional
            Its processing latency (see `processing_latency`), s.
        queue_wait : float, optional
            From its start event's arrival to its admission, s.
        """
        self.done.inc()
        for name, seconds in stage_timings.items():
            if name != "total":
                self.stage_seconds.labels(stage=name).observe(seconds)
        if latency is not None:
            self.latency.observe(latency)
        if queue_wait is not None:
            self.queue_wait.observe(queue_wait)

    def execution_failed(self, stage: str, queue_wait: float | None = None) -> None:
        """An execution ended failed in `stage`."""
        self.failed.labels(stage=stage).inc()
        if queue_wait is not None:
            self.queue_wait.observe(queue_wait)

    def set_in_flight(self, n: int) -> None:
        """Executions in flight now."""
        self.in_flight.set(n)

    def set_queued(self, n: int) -> None:
        """Executions whose start event waits in the journal now."""
        self.queued.set(n)

    def set_slices_busy(self, n: int) -> None:
        """Slices with work in hand now."""
        self.slices_busy.set(n)

    def slice_board(self, index: int, board: Mapping[str, Any]) -> None:
        """Take in the board of Slice `index` (0, 1, ...), as it came with a message.

        Its ``busy_seconds`` feeds the Slice's busy-time counter and its
        durations the histograms (`take_observed`); the Slices seen so far
        make `nightpipe_slices`. A board seen twice counts once.
        """
        with self._lock:
            self._reported.add(index)
            self.slices.set(len(self._reported))
            busy = board.get("busy_seconds")
            if isinstance(busy, int | float):
                before = self._busy_seconds.get(index, 0.0)
                grown = busy - before if busy >= before else busy  # a restarted Slice
                if grown > 0:
                    self.slice_busy_seconds.labels(slice=str(index)).inc(grown)
                self._busy_seconds[index] = float(busy)
            self.take_observed(("slice", index), board)

    def take_observed(self, source: Hashable, board: Mapping[str, Any]) -> int:
        """Observe the durations a board holds (`Board.observe`) not yet taken from `source`.

        Parameters
        ----------
        source : hashable
            Whose board it is (one sequence of durations per source).
        board : mapping
            A `framework.status.Board` snapshot, or its ``values``.

        Returns
        -------
        int
            How many durations were new.
        """
        with self._lock:
            last = self._seen.get(source, 0)
            new = 0
            for seq, name, seconds in board.get(OBSERVED, ()):
                if seq > last:
                    self._duration(name).observe(seconds)
                    new += 1
                    self._seen[source] = max(self._seen.get(source, 0), seq)
            return new

    def observe(self, name: str, seconds: float) -> None:
        """One duration measured on the master, e.g. ``observe("db_write", 0.02)``."""
        self._duration(name).observe(seconds)

    def count(self, name: str, amount: float = 1.0, documentation: str = "") -> None:
        """Add to the pipeline's own counter ``nightpipe_<name>_total``, e.g. ``alerts``.

        Raises
        ------
        MetricsError
            When `name` is not a valid metric name part, or names one of the
            metrics above.
        """
        counter = self._counters.get(name)
        if counter is None:
            with self._lock:
                counter = self._counters.get(name)
                if counter is None:
                    check_name(name, "counter name")
                    try:
                        counter = Counter(
                            f"{NAMESPACE}_{name}",
                            documentation or f"{name}, as counted by the pipeline",
                            registry=self.registry,
                        )
                    except ValueError as exc:
                        raise MetricsError(f"counter {name!r}: {exc}") from None
                    self._counters[name] = counter
        counter.inc(amount)

    def _duration(self, name: str) -> Histogram:
        hist = self._durations.get(name)
        if hist is not None:
            return hist
        with self._lock:
            if name not in self._durations:
                check_name(name, "duration name")
                try:
                    self._durations[name] = Histogram(
                        f"{NAMESPACE}_{name}_duration_seconds",
                        f"{name.replace('_', ' ')} durations reported by the ranks",
                        buckets=DURATION_BUCKETS,
                        registry=self.registry,
                    )
                except ValueError as exc:
                    raise MetricsError(f"duration {name!r}: {exc}") from None
            return self._durations[name]

    # -- serving -------------------------------------------------------------------------

    def start_server(self, address: str = DEFAULT_ADDRESS) -> str:
        """Serve ``/metrics`` on `address` (``HOST:PORT``; port 0 picks a free one).

        Returns
        -------
        str
            The bound ``HOST:PORT``.

        Raises
        ------
        MetricsError
            When the address is malformed, cannot be bound, or a server runs already.
        """
        if self._server is not None:
            raise MetricsError(f"metrics already served on {self.address}")
        host, port = parse_address(address)
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"metrics address {address!r}: cannot listen: {exc}") from None
        bound = self._server.server_address
        self.address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        return self.address

    def stop_server(self) -> None:
        """Stop serving; a no-op when not serving."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
        self._server = self._thread = None
        self.address = None
