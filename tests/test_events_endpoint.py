"""The network interface: Endpoint + client over real loopback sockets, journaled in batches."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from events import types as T
from events.client import Injector, Subscriber, inject, subscribe
from events.deadletter import DeadLetters
from events.endpoint import Endpoint, Request, error_reply, ok_reply
from events.envelope import Event
from events.journal import Journal
from events.validate import EventError, parse_event


def sources(fov: int, id: str | None = None) -> Event:
    return Event.new(T.DIASOURCES_READY, fov, {"paths": [f"v{fov}.parquet"]}, id=id)


def handle(
    endpoint: Endpoint, requests: list[Request], journal: Journal, dead: DeadLetters
) -> None:
    """The master's ingest step: validate, dead-letter, group-commit, then reply."""
    good: list[tuple[Request, Event]] = []
    for req in requests:
        try:
            good.append((req, parse_event(req.raw)))
        except EventError as exc:
            dead.write(req.raw, exc, source="endpoint")
            endpoint.reply(req, error_reply(exc))
    flags = journal.accept([e for _, e in good])
    for (req, event), new in zip(good, flags, strict=True):
        endpoint.reply(req, ok_reply(event, new))


class Server:
    """An Endpoint + Journal loop on a thread, as the master runs it."""

    def __init__(self, tmp: Path) -> None:
        self.endpoint = Endpoint()
        self.journal = Journal(tmp / "journal.sqlite")
        self.dead = DeadLetters(tmp / "deadletter.jsonl")
        self.batches: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            requests = self.endpoint.receive(0.05)
            if requests:
                self.batches.append(len(requests))
                handle(self.endpoint, requests, self.journal, self.dead)
        self.endpoint.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.journal.close()
        self.dead.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.stop()


def test_addresses_resolved() -> None:
    with Endpoint() as ep:
        for addr in (ep.address, ep.pub_address):
            assert addr.startswith("tcp://127.0.0.1:")
            assert int(addr.rsplit(":", 1)[1]) > 0
        assert ep.receive(0) == []


def test_bind_error_names_address() -> None:
    with Endpoint() as ep, pytest.raises(OSError, match=ep.address):
        Endpoint(address=ep.address)


def test_inject_round_trip(server: Server) -> None:
    e = sources(1, "ev-1")
    assert inject(server.endpoint.address, e) == {"ok": True, "id": "ev-1", "duplicate": False}
    assert inject(server.endpoint.address, e.to_dict())["duplicate"] is True
    assert server.journal.events_for(1) == [e]


def test_rejection_reply_and_dead_letter(server: Server, tmp_path: Path) -> None:
    bad = Event.new(
        T.NEXT_VISIT, 2, {"mjd": 60218.0, "ra": 1.0, "dec": 95.0, "filter": "r"}, id="b1"
    )
    reply = inject(server.endpoint.address, bad)
    assert reply["ok"] is False
    assert reply["field"] == "body.dec" and reply["event_id"] == "b1"
    assert "must be in [-90, 90]" in reply["error"]
    reply = inject(server.endpoint.address, b"\xff garbage")
    assert reply == {"ok": False, "error": reply["error"], "field": None, "event_id": None}
    lines = [json.loads(x) for x in (tmp_path / "deadletter.jsonl").read_text().splitlines()]
    assert [(r["event_id"], r["field"], r["source"]) for r in lines] == [
        ("b1", "body.dec", "endpoint"),
        (None, None, "endpoint"),
    ]
    assert '"dec": 95.0' in lines[0]["raw"] or '"dec":95.0' in lines[0]["raw"]
    assert server.journal.count() == 0


def test_req_socket_client_works(server: Server) -> None:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint.address)
    try:
        sock.send(sources(3, "via-req").to_json().encode())
        assert sock.poll(5000)
        assert json.loads(sock.recv())["id"] == "via-req"
    finally:
        sock.close()


def test_inject_from_subprocess(server: Server) -> None:
    code = (
        "import json, sys\n"
        "from events.client import inject\n"
        "from events.envelope import Event\n"
        "e = Event.new('nightmops.predictions_ready', 11, {'paths': []}, id='from-sub')\n"
        "print(json.dumps(inject(sys.argv[1], e)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, server.endpoint.address],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(out.stdout) == {"ok": True, "id": "from-sub", "duplicate": False}
    assert [e.id for e in server.journal.events_for(11)] == ["from-sub"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_inject_timeout_names_address() -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=address):
        inject(address, sources(1), timeout=0.3)
    assert time.monotonic() - t0 < 2


def _wait_subscribed(ep: Endpoint, sub: Subscriber) -> None:
    probe = Event.new(T.VISIT_DONE, 0, {}, id="probe")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ep.publish(probe)
        if sub.recv(0.02) is not None:
            while sub.recv(0.05) is not None:  # drain extra probes
                pass
            return
    raise AssertionError("subscription never reached the publisher")


def test_publish_subscribe() -> None:
    with (
        Endpoint() as ep,
        subscribe(ep.pub_address) as all_,
        Subscriber(ep.pub_address, [T.ALERTS_READY]) as alerts,
    ):
        _wait_subscribed(ep, all_)
        a = Event.new(T.ALERTS_READY, 4, {"path": "p", "n_alerts": 1})
        d = Event.new(T.VISIT_DONE, 4, {"timings": {"store": 0.5}})
        ep.publish(a)
        ep.publish(d)
        assert all_.recv(2) == a
        assert all_.recv(2) == d
        assert alerts.recv(2) == a
        assert alerts.recv(0.2) is None


def test_burst_of_1000_all_journaled(server: Server) -> None:
    events = [sources(i % 100, f"burst-{i}") for i in range(1000)]
    with Injector(server.endpoint.address) as injector:
        replies = injector.send_many(events)
        assert [r["id"] for r in replies] == [e.id for e in events]
        assert all(r["ok"] and not r["duplicate"] for r in replies)
        again = injector.send_many(events[::10])
        assert all(r["ok"] and r["duplicate"] for r in again)
    assert server.journal.count(direction="in") == 1000
    assert len(server.journal.events_for(7)) == 10
    assert max(server.batches) > 1, "requests were never group-committed"


def test_concurrent_injectors(server: Server) -> None:
    def worker(k: int, out: list[dict[str, Any]]) -> None:
        with Injector(server.endpoint.address) as injector:
            out.extend(injector.send(sources(k, f"c{k}-{i}")) for i in range(50))

    results: list[list[dict[str, Any]]] = [[] for _ in range(4)]
    threads = [threading.Thread(target=worker, args=(k, results[k])) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r["ok"] for res in results for r in res)
    assert sum(len(r) for r in results) == 200
    assert server.journal.count() == 200


def test_late_reply_after_timeout_is_not_mistaken(tmp_path: Path) -> None:
    with Endpoint() as ep, Injector(ep.address, timeout=0.2) as injector:
        with pytest.raises(TimeoutError):
            injector.send(sources(1, "slow"))
        (req,) = ep.receive(1)
        ep.reply(req, {"ok": True, "id": "slow", "duplicate": False})  # arrives too late
        done = threading.Event()

        def answer() -> None:
            (r,) = ep.receive(2)
            ep.reply(r, {"ok": True, "id": "next", "duplicate": False})
            done.set()

        t = threading.Thread(target=answer)
        t.start()
        injector.timeout = 5
        assert injector.send(sources(1, "next"))["id"] == "next"
        t.join(5)
        assert done.is_set()


def test_a_2_mb_message_gets_a_clear_rejection(server: Server) -> None:
    big = Event.new(T.NEXT_VISIT, 3, {"mjd": 60218.0, "ra": 1.0, "dec": 1.0, "filter": "r"})
    raw = big.to_dict() | {"source": "x" * (2 << 20)}
    reply = inject(server.endpoint.address, json.dumps(raw), timeout=10)
    assert reply["ok"] is False
    assert "more than the limit" in reply["error"]
    assert server.journal.count() == 0
