"""Logging: one file per run directory; every line names the rank and the execution."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from pathlib import Path

from framework.rundir import RunDir

current_execution: contextvars.ContextVar[str] = contextvars.ContextVar("execution", default="-")

FILE_ONLY = {"console": False}
"""``extra=`` of a record that goes to the log file but not to the console."""


class _UTCFormatter(logging.Formatter):
    """Times in UTC with the offset: ``2026-11-27T15:47:56.811+00:00``."""

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}+00:00"


def _console(record: logging.LogRecord) -> bool:
    return getattr(record, "console", True)


class _Context(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        record.execution = current_execution.get()
        return True


FORMAT = "%(asctime)s rank=%(rank)d exec=%(execution)s %(levelname)s %(name)s: %(message)s"


def setup_logging(
    run_dir: Path, rank: int, console_level: int | None = logging.INFO
) -> logging.Logger:
    """Log to ``RUN_DIR/nightpipe.log`` (all ranks append) and, on rank 0, to stderr.

    Each rank has its own logger, so ranks running as threads of one process
    (the in-process transport) still name themselves.
    """
    logger = logging.getLogger(f"nightpipe.rank{rank}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    ctx = _Context(rank)
    fh = logging.FileHandler(RunDir(run_dir).log, mode="a")
    fh.setLevel(logging.INFO)
    fh.setFormatter(_UTCFormatter(FORMAT))
    fh.addFilter(ctx)
    logger.addHandler(fh)
    if console_level is not None and rank == 0:
        sh = logging.StreamHandler(sys.stderr)
        sh.setLevel(console_level)
        sh.setFormatter(_UTCFormatter(FORMAT))
        sh.addFilter(ctx)
        sh.addFilter(_console)
        logger.addHandler(sh)
    return logger
