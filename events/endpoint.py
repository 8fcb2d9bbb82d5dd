"""The master's network endpoint: requests in on a ROUTER socket, events out on a PUB socket.

Wire protocol. A request is a multipart message whose last frame is the
event as UTF-8 JSON; any frames before it (after the peer identity that
ROUTER adds) are echoed back in front of the reply, so a DEALER client can
tag requests to match replies, and a REQ client works as is. The reply is
one JSON object: ``{"ok": true, "id": ..., "duplicate": bool}`` or
``{"ok": false, "error": ..., "field": ..., "event_id": ...}``.
Published events are two frames: the type (for prefix subscriptions) and
the event's JSON.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import zmq

from events.curve import Authenticator, ServerKeys, is_loopback
from events.envelope import Event

MAX_MESSAGE_BYTES = 64 << 20
"""Larger messages make ZeroMQ drop the peer; smaller ones over the event limit get a reply."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request received by the endpoint.

    Attributes
    ----------
    ident : bytes
        The peer's routing identity.
    raw : bytes
        The payload: the event as sent.
    route : tuple of bytes
        Frames to put in front of the reply (identity and any tags).
    """

    ident: bytes
    raw: bytes
    route: tuple[bytes, ...] = ()


class Endpoint:
    """ZeroMQ server side of the event interface.

    Parameters
    ----------
    address : str
        Where to bind the ROUTER socket for requests; port 0 picks a free port.
    pub_address : str
        Where to bind the PUB socket for outbound events.
    max_message_bytes : int
        Peers sending larger messages are disconnected by ZeroMQ; smaller
        ones that are still too big are left to `parse_event` to reject.
    keys : ServerKeys or None
        CURVE keys: only clients whose public keys are allowed get in. An
        address beyond loopback is refused without them.
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:0",
        pub_address: str = "tcp://127.0.0.1:0",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        keys: ServerKeys | None = None,
    ) -> None:
        if keys is None:
            for a in (address, pub_address):
                if a and not is_loopback(a):
                    raise OSError(
                        f"refusing to listen on {a} without authentication: anyone who can "
                        "reach it could send events; set [runtime] curve_keys to a key "
                        "directory made by `nightpipe keys DIR`, or listen on 127.0.0.1"
                    )
        ctx = zmq.Context.instance()
        self._router = ctx.socket(zmq.ROUTER)
        self._pub = ctx.socket(zmq.PUB)
        self._auth = Authenticator(keys) if keys is not None else None
        self.server_key = None if keys is None else keys.public.decode()
        try:
            for sock in (self._router, self._pub):
                sock.setsockopt(zmq.LINGER, 0)
                if keys is not None:
                    keys.secure(sock)
            self._router.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            self.address = _bind(self._router, address)
            self.pub_address = _bind(self._pub, pub_address)
        except BaseException:
            self.close()
            raise
        self._poller = zmq.Poller()
        self._poller.register(self._router, zmq.POLLIN)

    def receive(self, timeout: float, max_batch: int = 1024) -> list[Request]:
        """Wait for requests and take all already queued.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the first request; 0 does not wait.
        max_batch : int
            At most this many requests per call.

        Returns
        -------
        list of Request
            Empty if none arrived in time.
        """
        if 0 < timeout < 1e-3:
            # zmq polls in whole milliseconds: sleep a sub-millisecond wait instead of spinning
            time.sleep(timeout)
            timeout = 0
        if not self._poller.poll(max(0, int(timeout * 1000))):
            return []
        out: list[Request] = []
        while len(out) < max_batch:
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) < 2:
                continue  # ROUTER always adds the identity; nothing to answer
            out.append(Request(ident=frames[0], raw=frames[-1], route=tuple(frames[:-1])))
        return out

    def reply(self, req: Request, payload: dict[str, Any]) -> None:
        """Send a JSON reply to the peer that made `req` (dropped if it is gone)."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        self._router.send_multipart([*(req.route or (req.ident,)), body])

    def publish(self, event: Event) -> None:
        """Publish an outbound event to subscribers (none listening: dropped)."""
        self._pub.send_multipart([event.type.encode(), event.to_json().encode()])

    def close(self) -> None:
        """Close both sockets (and the authenticator)."""
        for sock in (self._router, self._pub):
            sock.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def ok_reply(event: Event, new: bool) -> dict[str, Any]:
    """The reply for an accepted event (``new`` False: a duplicate, ignored)."""
    return {"ok": True, "id": event.id, "duplicate": not new}


def error_reply(error: Exception) -> dict[str, Any]:
    """The reply for a rejected event; `error` is usually an `EventError`."""
    return {
        "ok": False,
        "error": str(error),
        "field": getattr(error, "field", None),
        "event_id": getattr(error, "event_id", None),
    }


def _bind(sock: zmq.Socket[bytes], address: str) -> str:
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        raise OSError(f"cannot bind the event endpoint to {address}: {exc}") from exc
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) else str(last)
