"""A throwaway PostgreSQL server for the tests.

`PgServer` runs ``initdb`` on a temporary directory under /tmp and starts a
server on a free loopback port with its socket in that directory. As root it
runs the server as the ``postgres`` system user, who owns the directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from events.tansu import free_port

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
    "/usr/lib/postgresql/*/bin; install them with `apt-get install postgresql` "
    "(or your system's postgresql server package)"
)

SUPERUSER = "nightpipe"
DATABASE = "nightpipe_test"


class PgServerError(RuntimeError):
    """The throwaway server could not be set up."""


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    for initdb in reversed(found):
        if (Path(initdb).parent / "pg_ctl").exists():
            return Path(initdb).parent
    raise PgServerError(INSTALL_HINT)


class PgServer:
    """A PostgreSQL server in a temporary directory; a context manager.

    Attributes
    ----------
    url : str
        ``postgresql+psycopg://nightpipe@127.0.0.1:PORT/nightpipe_test`` once
        started.
    """

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.run_as = self._server_user()
        self.base: Path | None = None
        self.port: int | None = None
        self.url = ""

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """initdb, start the server, create the test database."""
        self.base = Path(tempfile.mkdtemp(prefix="nightpipe-pg-", dir="/tmp"))
        try:
            (self.base / "sock").mkdir()
            if self.run_as:
                shutil.chown(self.base, self.run_as, self.run_as)
                shutil.chown(self.base / "sock", self.run_as, self.run_as)
            self._run(
                "initdb",
                "-D",
                str(self.base / "data"),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
            self._start_on_free_port()
            self.url = self.database_url(DATABASE)
            self.create_database(DATABASE)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self.base is None:
            return
        if (self.base / "data" / "postmaster.pid").exists():
            self._run(
                "pg_ctl", "-D", str(self.base / "data"), "-m", "fast", "-w", "stop", check=False
            )
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def database_url(self, name: str) -> str:
        """The SQLAlchemy URL of database ``name`` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str | None = None) -> str:
        """Create a new empty database (a fresh name by default); return its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        dsn = f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server comes back."""
        self._pg_ctl("restart", check=True)

    def pause(self) -> None:
        """Stop the server, keeping its data and port (`resume` starts it again)."""
        assert self.base is not None
        self._run("pg_ctl", "-D", str(self.base / "data"), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server again after `pause`, on the same port."""
        self._pg_start(check=True)

    def _start_on_free_port(self, tries: int = 3) -> None:
        assert self.base is not None
        for attempt in range(tries):
            self.port = free_port()
            if self._pg_start(check=attempt == tries - 1).returncode == 0:
                return

    def _pg_start(self, check: bool) -> subprocess.CompletedProcess:
        return self._pg_ctl("start", check)

    def _pg_ctl(self, action: str, check: bool) -> subprocess.CompletedProcess:
        """``pg_ctl start`` or ``restart``; always with the log file, or the server would
        keep our output pipes open and we would wait for it for ever."""
        assert self.base is not None
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base / 'sock'} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        data, log = str(self.base / "data"), str(self.base / "server.log")
        mode = ["-m", "fast"] if action == "restart" else []
        args = ["-D", data, "-o", opts, "-l", log, "-w", "-t", "60", *mode, action]
        return self._run("pg_ctl", *args, check=check)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        if self.run_as:
            cmd = [_runuser() or "runuser", "-u", self.run_as, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd="/tmp")
        if check and done.returncode != 0:
            log = ""
            if self.base is not None and (self.base / "server.log").exists():
                log = (self.base / "server.log").read_text()[-2000:]
            raise PgServerError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}"
            )
        return done

    @staticmethod
    def _server_user() -> str | None:
        """None to run as ourselves; ``postgres`` when we are root."""
        if os.geteuid() != 0:
            return None
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            raise PgServerError(
                "running as root, and PostgreSQL refuses to run as root, but there is no "
                "`postgres` system user: install the server with `apt-get install postgresql`, "
                "which creates it"
            ) from None
        if _runuser() is None:
            raise PgServerError("running as root and `runuser` is missing (util-linux)")
        return "postgres"


def _runuser() -> str | None:
    """``runuser``: on the PATH, or in the sbin folders a root shell has and ``env -i`` drops."""
    return shutil.which(
        "runuser", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    )
