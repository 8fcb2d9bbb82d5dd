"""Start a pipeline: under MPI (one role per rank) or in one process (threads)."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from framework.config import PipelineConfig
from framework.execution import describe_exception
from framework.logs import FILE_ONLY
from framework.master import Master, SliceHung, stop_slices
from framework.rundir import RunDir
from framework.slices import SliceRunner
from framework.transport import InProcessHub, MPITransport, Waiter

START_FAILED = 2
"""Exit code of a pipeline that could not start."""

HUNG = 3
"""Exit code of a pipeline that ended because a Slice stopped answering."""


def run_mpi(config: PipelineConfig, run_dir: Path) -> int:
    """Run this rank's role in an ``mpiexec`` job; returns the exit code.

    If the master cannot start (a Slice's set-up failed, the run directory is
    in use, the database is unreachable...), it says why in one paragraph on
    stderr (the traceback goes to the log), stops the Slices and returns
    `START_FAILED`; if they do not stop, the whole job is aborted.
    """
    from mpi4py import MPI

    transport = MPITransport(MPI.COMM_WORLD)
    if transport.size < 2:
        raise SystemExit(
            "nightpipe run needs at least 2 ranks (a master and a Slice): "
            "mpiexec -n 3 nightpipe run CONFIG"
        )
    run_dir = Path(run_dir)
    if transport.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    MPI.COMM_WORLD.Barrier()
    if transport.rank == 0:
        code = _run_master(config, run_dir, transport, MPI.COMM_WORLD.Abort)
    else:
        code = SliceRunner(config, run_dir, transport).run()
    transport.close()
    return code


def _run_master(
    config: PipelineConfig, run_dir: Path, transport: MPITransport, abort: Callable[[int], None]
) -> int:
    started = False
    try:
        master = Master(config, run_dir, transport, abort=abort)
        started = True
        return master.run()
    except SliceHung as exc:
        _say(f"nightpipe: the pipeline stopped: {exc}.", run_dir)
        abort(HUNG)
        return HUNG
    except Exception as exc:
        _say(f"nightpipe: the pipeline could not start: {describe_exception(exc)}", run_dir)
        if not started:
            rt = config.runtime
            waiter = Waiter(rt.waiting, rt.min_sleep_ms / 1e3, rt.max_sleep_ms / 1e3)
            if stop_slices(transport, waiter, timeout=30.0):
                abort(START_FAILED)
        return START_FAILED


def _say(paragraph: str, run_dir: Path) -> None:
    """One paragraph on stderr; the traceback goes to the run's log only."""
    logging.getLogger("nightpipe.rank0").error(paragraph, exc_info=True, extra=FILE_ONLY)
    print(f"{paragraph}\n(the traceback is in {RunDir(run_dir).log})", file=sys.stderr)


class InProcessPipeline:
    """A whole pipeline in one process: the master and each Slice on a thread.

    For tests and notebooks. `master` is available once `start` returns.
    """

    def __init__(self, config: PipelineConfig, run_dir: Path, n_slices: int = 2) -> None:
        self.hub = InProcessHub(n_slices + 1)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.slices = [
            SliceRunner(config, self.run_dir, self.hub.transport(r), install_signals=False)
            for r in range(1, n_slices + 1)
        ]
        self.master = Master(config, self.run_dir, self.hub.transport(0), install_signals=False)
        self.threads: list[threading.Thread] = []
        self.exit_code: int | None = None
        self.error: BaseException | None = None

    def _run_master(self) -> None:
        try:
            self.exit_code = self.master.run()
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def start(self) -> InProcessPipeline:
        """Start every rank's thread."""
        for s in self.slices:
            t = threading.Thread(target=s.run, name=f"slice-{s.rank}", daemon=True)
            t.start()
            self.threads.append(t)
        t = threading.Thread(target=self._run_master, name="master", daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def join(self, timeout: float = 60.0) -> int:
        """Wait for every rank to stop; returns the master's exit code."""
        for t in self.threads:
            t.join(timeout)
            if t.is_alive():
                raise TimeoutError(f"{t.name} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.exit_code is not None
        return self.exit_code
