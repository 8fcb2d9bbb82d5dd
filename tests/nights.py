"""Small simulated nights and replays for end-to-end tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from association.nights.opsim import BUNDLED_DB
from association.nights.replay import Replayer, ReplayOptions
from association.nights.simulate import SimConfig, simulate
from association.storage import open_storage
from tests.databases import table_rows

POLE_REGION = (0.0, -87.0, 4.0)
"""Around the south pole: 18 visits that straddle RA 0 and revisit fields."""


def make_archive(out: Path, region=POLE_REGION, max_visits=None, **sim) -> Path:
    """Simulate a night archive (fast: a region of night 60217.5)."""
    simulate(BUNDLED_DB, out, 60217.5, SimConfig(**sim), region, max_visits, overwrite=True)
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
