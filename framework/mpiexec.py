"""The MPI launcher of this Python, and the command that runs a pipeline under it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
"""Scripts of this Python's environment: ``nightpipe``, and ``mpiexec`` of the mpich wheel."""


def mpiexec_path() -> str:
    """The mpiexec beside this Python, else the one on PATH.

    Raises
    ------
    FileNotFoundError
        There is none; the message says what to install.
    """
    here = BIN / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("no mpiexec found: install MPI (pip install mpich)")
    return found


def run_command(ranks: int, config: str | Path, run_dir: str | Path, *args: str) -> list[str]:
    """``mpiexec -n RANKS nightpipe run CONFIG --run-dir RUN_DIR ARGS...`` as an argv."""
    return [
        mpiexec_path(),
        "-n",
        str(ranks),
        str(BIN / "nightpipe"),
        "run",
        str(config),
        "--run-dir",
        str(run_dir),
        *args,
    ]
