"""Small simulated nights and replays for end-to-end tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from association.nights.opsim import BUNDLED_DB
from association.nights.replay import Replayer, ReplayOptions
from association.nights.simulate import SimConfig, simulate
from association.storage import open_storage
from events.journal import Journal
from framework.mpiexec import BIN
from tests.databases import table_rows

POLE_REGION = (0.0, -87.0, 4.0)
"""Around the south pole: 18 visits that straddle RA 0 and revisit fields."""


def make_archive(
    out: Path,
    region=POLE_REGION,
    max_visits=None,
    night: float = 60217.5,
    after: Path | None = None,
    **sim,
) -> Path:
    """Simulate a night archive (fast: a region of night 60217.5).

    With ``after``, the next night of that archive's survey (its sky settings:
    no ``sim``).
    """
    config = None if after is not None else SimConfig(**sim)
    simulate(BUNDLED_DB, out, night, config, region, max_visits, overwrite=True, after=after)
    return out


def replay(archive: Path, run_dir: Path, ranks: int = 3, **opts) -> dict:
    """Replay into a new pipeline under mpiexec; the summary."""
    return Replayer(ReplayOptions(archive=archive, run_dir=run_dir, ranks=ranks, **opts)).run()


def db_rows(run_dir: Path, db_url: str | None = None) -> dict[str, set[tuple]]:
    """Every row of the run's database (volatile columns left out)."""
    with open_storage(db_url, run_dir, None) as storage:
        return table_rows(storage.engine)


def truth(archive: Path) -> dict[str, np.ndarray]:
    """The archive's DIASource truth as columns."""
    t = pq.read_table(archive / "truth" / "diasources.parquet")
    return {n: t.column(n).to_numpy(zero_copy_only=False) for n in t.column_names}


def copy_archive(src: Path, dst: Path) -> Path:
    """A copy to damage."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


def replay_cmd(run: Path, *archives: Path, sets: tuple[str, ...] = ()) -> list[str]:
    """``nightpipe replay ARCHIVES --run-dir RUN --speed max [--set ...]``."""
    cmd = [str(BIN / "nightpipe"), "replay", *map(str, archives), "--run-dir", str(run)]
    cmd += ["--speed", "max"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def outcomes(run: Path) -> dict[int, str]:
    """The visits of a run directory that have an outcome (none before its journal exists)."""
    if not (run / "journal.sqlite").exists():
        return {}
    with Journal(run / "journal.sqlite") as j:
        return j.outcomes()


def kill_master(
    run: Path, proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 180
) -> None:
    """Once ``ready()`` holds, kill -9 the master of the replay ``proc``'s pipeline.

    mpiexec takes the rest of the job down; the replay then fails.
    """
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else proc.args
        assert time.time() < deadline, f"not ready to kill within {timeout} s"
        time.sleep(0.02)
    endpoint = run / "endpoint.json"
    os.kill(json.loads(endpoint.read_text())["pid"], signal.SIGKILL)
    proc.wait(60)
    assert proc.returncode != 0
    endpoint.unlink(missing_ok=True)
