"""However a replay ends, no process of the pipeline job it started is left.

Each case runs ``nightpipe replay`` as a command, with a token of the test's
own in its environment, which every process it starts inherits (mpiexec,
hydra_pmi_proxy, the ``nightpipe run`` ranks, the preload). The replay is
ended one way or another; then ``/proc`` must hold no process with the token.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.nights import copy_archive, make_archive

pytestmark = pytest.mark.mpi

BIN = Path(sys.executable).parent
TOKEN_VAR = "NIGHTPIPE_TEST_JOB"
VISITS = 6
SPAN_S = 40.0  # the archive's events spread over this long at the replay's speed


def _with_token(token: str) -> list[tuple[int, str]]:
    """(pid, command) of every process whose environment carries `token`."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append((int(entry.name), cmd.strip()))
    return found


class Replay:
    """``nightpipe replay`` as a command, its stderr in a file."""

    def __init__(self, archive: Path, run: Path, *args: str) -> None:
        self.token = uuid.uuid4().hex
        self.run = run
        run.parent.mkdir(parents=True, exist_ok=True)
        self.err_path = run.parent / f"{run.name}.stderr"
        speed = _speed(archive)
        cmd = [str(BIN / "nightpipe"), "replay", str(archive), "--run-dir", str(run)]
        cmd += ["--ranks", "2", "--speed", f"{speed:.6g}", *args]
        env = dict(os.environ, **{TOKEN_VAR: self.token})
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 240.0) -> None:
        """Until the replay has said `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            assert self.proc.poll() is None, f"replay ended early: {self.stderr()}"
            assert time.monotonic() < deadline, f"no {text!r} in: {self.stderr()}"
            time.sleep(0.05)

    def job(self) -> list[tuple[int, str]]:
        """The processes the replay started, still there."""
        return [p for p in _with_token(self.token) if p[0] != self.proc.pid]

    def ended(self, timeout: float = 120.0) -> int:
        """The replay's exit code, once no process of its job remains."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        left = self.job()
        assert left == [], f"left running: {left}\n{self.stderr()}"
        return code


def _speed(archive: Path) -> float:
    times = [json.loads(x)["time"] for x in (archive / "events.jsonl").read_text().splitlines()]
    return (max(times) - min(times)) / SPAN_S


def _up_with_its_job(r: Replay) -> None:
    """Until visits are being sent into the pipeline; its job is there."""
    r.wait_for("replay: sending")
    time.sleep(1.0)
    names = " ".join(cmd for _, cmd in r.job())
    assert "mpiexec" in names and "hydra_pmi_proxy" in names, names
    assert names.count("nightpipe run") >= 3, names  # mpiexec's command line, and 2 ranks


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_archive(tmp_path_factory.mktemp("lifecycle") / "archive", max_visits=VISITS)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_mid_night_drains_then_leaves_nothing(night, tmp_path, sig):
    r = Replay(night, tmp_path / "run")
    _up_with_its_job(r)
    r.proc.send_signal(sig)
    code = r.ended()
    assert code == (130 if sig == signal.SIGINT else 143), r.stderr()
    assert "stopping the pipeline (SIGTERM" in r.stderr()
    log = (r.run / "nightpipe.log").read_text()
    assert "SIGTERM: draining" in log  # a graceful stop came first


def test_a_signal_while_the_pipeline_starts(night, tmp_path):
    r = Replay(night, tmp_path / "run")
    r.wait_for("replay: starting a 2-rank pipeline")
    deadline = time.monotonic() + 60
    while len(r.job()) < 3 and time.monotonic() < deadline:  # mpiexec, its proxy, a rank
        time.sleep(0.02)
    assert not (r.run / "endpoint.json").exists(), "the pipeline was up already"
    r.proc.send_signal(signal.SIGTERM)
    assert r.ended() == 143, r.stderr()


def test_a_pipeline_that_fails_to_start(night, tmp_path):
    r = Replay(night, tmp_path / "run", "--set", "crossmatch.default_radius_arcsec=100")
    assert r.ended() == 1, r.stderr()
    assert "before it was up" in r.stderr()


def test_an_error_of_the_replay_itself(night, tmp_path):
    """The replay cannot write its send log: an exception of its own, mid-start."""
    (tmp_path / "run" / "replay_sends.jsonl").mkdir(parents=True)
    r = Replay(night, tmp_path / "run")
    assert r.ended() == 1, r.stderr()
    assert "IsADirectoryError" in r.stderr()
    assert "replay: pipeline up" in r.stderr()  # the job had started


def test_no_progress_times_out_and_the_stuck_pipeline_is_killed(night, tmp_path):
    """No detections: every visit waits in crossmatch, the replay gives up, the drain
    cannot finish, and the job is killed after the grace period."""
    stuck = copy_archive(night, tmp_path / "stuck")
    lines = (stuck / "events.jsonl").read_text().splitlines()
    keep = [x for x in lines if json.loads(x)["type"] != "detection.diasources_ready"]
    (stuck / "events.jsonl").write_text("\n".join(keep) + "\n")
    r = Replay(stuck, tmp_path / "run", "--speed", "max", "--timeout", "3", "--grace", "3")
    assert r.ended() == 1, r.stderr()
    err = r.stderr()
    assert "made no progress for 3 s" in err and "waiting for detection.diasources_ready" in err
    assert "killed if still running in 3 s" in err
