"""The compiled kernels, built once per install rather than once per rank.

Every numba kernel of nightpipe is compiled with ``cache=True``: numba keeps
the machine code in ``__pycache__`` beside each module (or under
``NUMBA_CACHE_DIR``). `ensure_compiled` makes sure that cache is current. The
first process to find it stale compiles every kernel while any other process
(another rank of the same job, another job) waits on a file lock, then finds
it current and only loads. ``make install`` runs ``python -m association.warmup``,
so a pipeline's ranks normally just load.

A stamp beside the lock records what the cache was built from: the numba and
Python versions and the size and time of each kernel module. Editing a kernel
module makes the stamp stale, and the next start compiles again, once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PACKAGE = Path(__file__).parent


def kernel_modules() -> list[Path]:
    """The package's modules that use numba: what the cache is built from."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(errors="replace")
        if "import numba" in text or "from numba" in text:
            found.append(path)
    return found


STAMP = "nightpipe-kernels.json"
LOCK = "nightpipe-kernels.lock"


def cache_dir() -> Path:
    """Where the stamp and the lock live: ``NUMBA_CACHE_DIR``, else the package's ``__pycache__``."""
    given = os.environ.get("NUMBA_CACHE_DIR")
    return Path(given) if given else PACKAGE / "__pycache__"


def _fingerprint() -> str:
    import numba

    parts = [numba.__version__, sys.version, str(cache_dir())]
    for path in kernel_modules():
        st = path.stat()
        parts.append(f"{path.relative_to(PACKAGE)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def is_current() -> bool:
    """Whether the kernels were compiled for this install as it is now."""
    try:
        stamp = json.loads((cache_dir() / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("fingerprint") == _fingerprint()


@contextmanager
def _locked(say: Callable[[str], None]) -> Iterator[None]:
    where = cache_dir()
    where.mkdir(parents=True, exist_ok=True)
    with open(where / LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another process compiling the numba kernels")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def warm_up_all() -> int:
    """Compile (or load from the cache) every kernel now; how many functions were compiled."""
    from numba.core import event

    from association.alerts.avro import warm_up as avro
    from association.catalogue import warm_up as catalogue
    from association.matching.zoneindex import warm_up as zoneindex
    from association.storage import warm_up_reads

    with event.install_recorder("numba:compile") as rec:
        zoneindex()
        _association()
        catalogue()
        avro()
        _storage()
        warm_up_reads()
    return sum(1 for _, ev in rec.buffer if ev.is_start)


def ensure_compiled(say: Callable[[str], None] | None = None) -> int:
    """Make the kernel cache current, compiling in one process at a time.

    Parameters
    ----------
    say : callable, optional
        Told what is happening when there is something to wait for (a log's
        ``info``, ``print``).

    Returns
    -------
    int
        Functions this call compiled: 0 when the cache was current, or another
        process compiled while this one waited.
    """
    say = say or (lambda _msg: None)
    if is_current():
        return 0
    with _locked(say):
        if is_current():
            say("kernels compiled by another process: loading them")
            return 0
        say("compiling the numba kernels (once per install; about a minute on a loaded machine)")
        t0 = time.monotonic()
        n = warm_up_all()
        stamp = {"fingerprint": _fingerprint(), "compiled": n, "at": time.time()}
        tmp = cache_dir() / f"{STAMP}.{os.getpid()}"
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, cache_dir() / STAMP)
        say(f"compiled {n} kernel functions in {time.monotonic() - t0:.1f} s")
        return n


def _association() -> None:
    # The crossmatch's costs, the movers and the assignment as the stages call them.
    from association.matching.assign import warm_up as assign
    from association.matching.movers import warm_up as movers

    assign()
    movers()


def _storage() -> None:
    # A visit stored and read back through the same calls as the pipeline's,
    # on a throwaway SQLite file: the native kernels compile for its types.
    import numpy as np

    from association.columns import DIASOURCE_DTYPE, OBJECT_DTYPE
    from association.storage import FrozenParameters, VisitRecord, open_storage

    with (
        tempfile.TemporaryDirectory(prefix="nightpipe-warmup-") as tmp,
        open_storage(None, tmp, FrozenParameters(6, 20), create=True) as storage,
    ):
        objects = np.zeros(1, OBJECT_DTYPE)
        objects["diaObjectId"] = 1
        sources = np.zeros(1, DIASOURCE_DTYPE)
        sources["diaSourceId"] = sources["diaObjectId"] = sources["visit"] = 1
        storage.bulk_load_objects(objects)
        storage.bulk_load_diasources(sources)
        sources["visit"], sources["diaSourceId"] = 2, 2
        storage.store_visit(VisitRecord(2, 60000.0, 0.0, 0.0, "r", 1, 0, 0, 0), sources, objects)
        storage.load_objects(0, 1 << 62)
        storage.load_recent_diasources(0, 1 << 62)
        storage.load_object_columns(np.zeros(1, np.int64), np.ones(1, np.int64), ["ra"])


def main() -> int:
    """``python -m association.warmup``: compile the kernels unless the cache is current."""
    n = ensure_compiled(lambda msg: print(f"warm-up: {msg}", flush=True))
    if n == 0:
        print(f"warm-up: the kernel cache is current ({cache_dir()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
