"""Shared fixtures: databases for the storage tests, a Kafka broker for the stream tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from association.storage import SqliteStorage, open_storage
from events.tansu import KafkaServer, KafkaServerError
from tests.databases import PARAMS
from tests.pgserver import PgServer, PgServerError


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM ends the run as Ctrl-C does: the fixtures' servers are stopped, not left behind.

    SIGINT gets Python's own handler even where the run inherited it ignored (a shell's
    background job): a handled signal is reset to the default in the commands the tests
    start, so the tests' Ctrl-C reaches them, as a user's would.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the session; fails if it cannot start."""
    try:
        server = PgServer()
        server.start()
    except PgServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    """A throwaway Kafka-compatible broker (Tansu) for the session; fails if it cannot start."""
    try:
        server = KafkaServer()
        server.start()
    except KafkaServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(pg_server: PgServer) -> str:
    """``postgresql+psycopg://`` URL of an empty database on the throwaway server."""
    return pg_server.url


@pytest.fixture
def sqlite_storage(tmp_path: Path) -> Iterator[SqliteStorage]:
    """A new database in ``tmp_path/nightpipe.sqlite``, through the C API."""
    storage = open_storage(None, tmp_path, PARAMS, create=True)
    assert isinstance(storage, SqliteStorage)
    yield storage
    storage.close()


@pytest.fixture(scope="session")
def pole_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated night near the south pole: 18 visits across RA 0, revisits, movers."""
    from tests.nights import make_archive

    return make_archive(tmp_path_factory.mktemp("pole") / "archive")


@pytest.fixture(scope="session")
def pole_reference(pole_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That night replayed under mpiexec, 2 Slices, SQLite: the run others compare with."""
    from tests.nights import replay

    run = tmp_path_factory.mktemp("pole-ref") / "run"
    summary = replay(pole_archive, run, ranks=3)
    assert summary["failed"] == 0, summary
    return run
