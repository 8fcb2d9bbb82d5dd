"""Message transports: MPI through mpi4py, and an in-process one for tests.

Messages are pickled with protocol 5; numpy arrays and other buffers travel
out of band as raw byte buffers, never inside the pickle. Every send and
receive is non-blocking, so the master never sits on one Slice.
"""

from __future__ import annotations

import os
import pickle
import queue
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

TAG_HEADER = 11
TAG_BUFFER = 12


def dumps(msg: Any) -> tuple[bytes, list[memoryview]]:
    """Pickle `msg`, keeping its buffers (numpy arrays) out of band."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(msg, protocol=5, buffer_callback=buffers.append)
    return head, [b.raw() for b in buffers]


def loads(head: bytes, buffers: list[Any]) -> Any:
    """Inverse of `dumps`."""
    return pickle.loads(head, buffers=buffers)


class Transport(Protocol):
    """Point-to-point messages between ranks; rank 0 is the master."""

    rank: int
    size: int

    def send(self, dest: int, msg: Any) -> None:
        """Queue `msg` for `dest`; returns at once."""

    def poll(self) -> tuple[int, Any] | None:
        """One received message as (source, msg), or None; never blocks."""

    def close(self) -> None:
        """Release resources (outstanding sends are completed)."""


@dataclass
class _Incoming:
    source: int
    head: bytes
    buffers: list[Any]
    requests: list[Any]


class MPITransport:
    """Transport over an mpi4py communicator.

    A message is a header (the pickle and its buffer sizes) followed by one
    message per out-of-band buffer, each sent with ``Isend`` straight from the
    array's memory and received with ``Irecv`` into a fresh buffer.
    """

    def __init__(self, comm: Any = None) -> None:
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._sends: list[tuple[Any, Any]] = []
        self._incoming: deque[_Incoming] = deque()
        self._status = MPI.Status()

    def send(self, dest: int, msg: Any) -> None:
        MPI = self._MPI
        head, bufs = dumps(msg)
        header = (head, [b.nbytes for b in bufs])
        self._sends.append((self.comm.isend(header, dest=dest, tag=TAG_HEADER), header))
        for b in bufs:
            self._sends.append((self.comm.Isend([b, MPI.BYTE], dest=dest, tag=TAG_BUFFER), b))
        self._reap()

    def _reap(self) -> None:
        if self._sends:
            self._sends = [(r, keep) for r, keep in self._sends if not r.Test()]

    def poll(self) -> tuple[int, Any] | None:
        MPI = self._MPI
        self._reap()
        # MPICH's first probe after a sleep only makes progress; the second sees
        # what that progress delivered (measured: halves the wake-up latency).
        if self.comm.Iprobe(
            source=MPI.ANY_SOURCE, tag=TAG_HEADER, status=self._status
        ) or self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_HEADER, status=self._status):
            src = self._status.Get_source()
            head, sizes = self.comm.recv(source=src, tag=TAG_HEADER)
            bufs = [bytearray(n) for n in sizes]
            reqs = [self.comm.Irecv([b, MPI.BYTE], source=src, tag=TAG_BUFFER) for b in bufs]
            self._incoming.append(_Incoming(src, head, bufs, reqs))
        # Deliver in order per source; a message whose buffers are still in
        # flight holds up only later messages from the same source.
        held: set[int] = set()
        for inc in self._incoming:
            if inc.source in held:
                continue
            if MPI.Request.Testall(inc.requests):
                self._incoming.remove(inc)
                return inc.source, loads(inc.head, inc.buffers)
            held.add(inc.source)
        return None

    def close(self) -> None:
        MPI = self._MPI
        if self._sends:
            MPI.Request.Waitall([r for r, _ in self._sends])
        self._sends = []


class InProcessHub:
    """The shared mailboxes of an in-process run (one per rank)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.boxes: list[queue.SimpleQueue[tuple[int, bytes, list[bytes]]]] = [
            queue.SimpleQueue() for _ in range(size)
        ]

    def transport(self, rank: int) -> InProcessTransport:
        """The transport of one rank."""
        return InProcessTransport(self, rank)


class InProcessTransport:
    """Same semantics as `MPITransport` between threads of one process.

    Messages are copied through the same pickling, so ranks share nothing.
    """

    def __init__(self, hub: InProcessHub, rank: int) -> None:
        self.hub = hub
        self.rank = rank
        self.size = hub.size

    def send(self, dest: int, msg: Any) -> None:
        head, bufs = dumps(msg)
        self.hub.boxes[dest].put((self.rank, head, [bytes(b) for b in bufs]))

    def poll(self) -> tuple[int, Any] | None:
        try:
            src, head, bufs = self.hub.boxes[self.rank].get_nowait()
        except queue.Empty:
            return None
        return src, loads(head, [bytearray(b) for b in bufs])

    def close(self) -> None:
        pass


class Waiter:
    """How an idle rank waits: spin (``active``) or back off and sleep (``passive``).

    Parameters
    ----------
    mode : {"active", "passive"}
    min_sleep, max_sleep : float
        Seconds; the passive sleep doubles from `min_sleep` up to `max_sleep`
        while idle and drops back on activity.
    """

    def __init__(self, mode: str, min_sleep: float = 5e-5, max_sleep: float = 5e-3) -> None:
        self.active = mode == "active"
        self.min_sleep = min_sleep
        self.max_sleep = max_sleep
        self._sleep = min_sleep

    def busy(self) -> None:
        """Something happened: wake up fully."""
        self._sleep = self.min_sleep

    def next_timeout(self) -> float:
        """How long the next idle wait may block, in seconds (0 when spinning)."""
        if self.active:
            return 0.0
        t = self._sleep
        self._sleep = min(self._sleep * 2, self.max_sleep)
        return t

    def idle(self) -> None:
        """Wait once, as the mode says."""
        t = self.next_timeout()
        if t > 0:
            time.sleep(t)
        else:
            os.sched_yield()  # spin, but let other ranks sharing this core run
