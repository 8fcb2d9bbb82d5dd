"""Client side of the event interface: send events to a master, subscribe to its output."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import zmq

from events.curve import ClientKeys
from events.endpoint import MAX_MESSAGE_BYTES
from events.envelope import Event


def inject(
    address: str,
    event: Event | dict[str, Any] | str | bytes,
    timeout: float = 5.0,
    keys: ClientKeys | None = None,
) -> dict[str, Any]:
    """Send one event to a running master and return its reply.

    Parameters
    ----------
    address : str
        The master's request endpoint, e.g. ``tcp://127.0.0.1:5555``.
    event : Event, dict, str or bytes
        The event; dicts are sent as JSON, str and bytes as they are.
    timeout : float
        Seconds to wait for the reply.
    keys : ClientKeys, optional
        CURVE keys, for a master that requires them.

    Returns
    -------
    dict
        ``{"ok": True, "id": ..., "duplicate": ...}`` or
        ``{"ok": False, "error": ..., "field": ..., "event_id": ...}``.

    Raises
    ------
    TimeoutError
        No reply within `timeout`.
    """
    with Injector(address, timeout, keys) as injector:
        return injector.send(event)


class Injector:
    """One connection to a master, for sending many events.

    Parameters
    ----------
    address : str
        The master's request endpoint.
    timeout : float
        Seconds to wait for each reply.
    keys : ClientKeys, optional
        CURVE keys, for a master that requires them.
    """

    def __init__(self, address: str, timeout: float = 5.0, keys: ClientKeys | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.secure(self._sock)
        self._tags = itertools.count()
        try:
            self._sock.connect(address)
        except zmq.ZMQError as exc:
            self._sock.close()
            raise ValueError(f"cannot connect to {address!r}: {exc}") from exc

    def send(self, event: Event | dict[str, Any] | str | bytes) -> dict[str, Any]:
        """Send one event and wait for its reply (see `inject`)."""
        return self.send_many([event])[0]

    def send_many(
        self, events: Iterable[Event | dict[str, Any] | str | bytes], window: int = 256
    ) -> list[dict[str, Any]]:
        """Send events pipelined, at most `window` unanswered, and return replies in order.

        Raises
        ------
        TimeoutError
            No reply came for `timeout` seconds while some were outstanding.
        """
        payloads = [_encode(e) for e in events]
        for i, p in enumerate(payloads):
            if len(p) > MAX_MESSAGE_BYTES:
                raise ValueError(
                    f"event {i} is {len(p)} bytes; a master takes at most {MAX_MESSAGE_BYTES}"
                )
        replies: dict[bytes, dict[str, Any]] = {}
        tags = [str(next(self._tags)).encode() for _ in payloads]
        wanted = set(tags)
        sent = 0
        while len(replies) < len(payloads):
            while sent < len(payloads) and sent - len(replies) < window:
                self._send(tags[sent], payloads[sent])
                sent += 1
            tag, reply = self._recv()
            if tag in wanted:  # late replies to requests that timed out are dropped
                replies[tag] = reply
        return [replies[t] for t in tags]

    def _send(self, tag: bytes, payload: bytes) -> None:
        if not self._sock.poll(int(self.timeout * 1000), zmq.POLLOUT):
            raise self._timeout()
        self._sock.send_multipart([tag, payload], zmq.NOBLOCK)

    def _recv(self) -> tuple[bytes, dict[str, Any]]:
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                raise self._timeout()
            frames = self._sock.recv_multipart()
            if len(frames) == 2:  # anything else is not a reply to us
                try:
                    reply = json.loads(frames[1])
                except ValueError:
                    continue
                if isinstance(reply, dict):
                    return frames[0], reply

    def _timeout(self) -> TimeoutError:
        return TimeoutError(
            f"no reply from a nightpipe master at {self.address} within {self.timeout:g} s"
            " (is the master running and listening there?)"
        )

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def __enter__(self) -> Injector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Subscriber:
    """Receives the events a master publishes.

    ZeroMQ subscriptions take a moment to reach the publisher; events
    published before that are not seen.

    Parameters
    ----------
    pub_address : str
        The master's publish endpoint.
    types : iterable of str
        Event types (or type prefixes, e.g. ``association.``) to receive;
        empty means all.
    """

    def __init__(
        self, pub_address: str, types: Iterable[str] = (), keys: ClientKeys | None = None
    ) -> None:
        self.pub_address = pub_address
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.secure(self._sock)
        prefixes = list(types) or [""]
        for prefix in prefixes:
            self._sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self._sock.connect(pub_address)

    def recv(self, timeout: float | None = None) -> Event | None:
        """The next event, or None if none within `timeout` seconds (None: wait forever)."""
        ms = None if timeout is None else max(0, int(timeout * 1000))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._sock.poll(ms, zmq.POLLIN):
                return None
            frames = self._sock.recv_multipart()
            try:
                return Event.from_dict(json.loads(frames[-1]))
            except (ValueError, KeyError, TypeError):
                if deadline is not None:
                    ms = max(0, int((deadline - time.monotonic()) * 1000))

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.recv()
            if event is not None:
                yield event

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def subscribe(pub_address: str, types: Iterable[str] = ()) -> Subscriber:
    """Open a `Subscriber` to a master's published events."""
    return Subscriber(pub_address, types)


def _encode(event: Event | dict[str, Any] | str | bytes) -> bytes:
    if isinstance(event, Event):
        return event.to_json().encode()
    if isinstance(event, dict):
        return json.dumps(event, separators=(",", ":")).encode()
    if isinstance(event, str):
        return event.encode("utf-8", errors="surrogatepass")
    if isinstance(event, bytes | bytearray | memoryview):
        return bytes(event)
    raise TypeError(f"cannot send a {type(event).__name__} as an event")
