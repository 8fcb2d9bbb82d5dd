"""A night archive's prepared starting database: its catalogue loaded once, copied per replay.

Loading a full-density starting catalogue (31.6 M Objects, 60 M DIASources)
takes minutes; a night is often replayed many times. ``nightpipe prepare``
loads it once into ``ARCHIVE/prepared/`` and a replay into a new run
directory on SQLite copies that file instead of loading the catalogue again.
The copy is used only while it matches: the same schema version, partition
and catalogue files (name, size and modification time); otherwise the
replay loads the catalogue as before.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from association.storage import SQLITE_NAME, FrozenParameters
from association.storage import tables as db
from events.archive import Archive

DIRECTORY = "prepared"
"""The archive's folder of the prepared database."""

KEY = "key.json"
"""What the prepared database was made from (`prepared_key`)."""

CATALOGUE_FILES = ("catalogue_objects", "catalogue_diasources")


def prepared_key(archive: Archive, params: FrozenParameters) -> dict[str, Any]:
    """What a prepared database of ``archive`` at ``params`` depends on."""
    files = {}
    for name in CATALOGUE_FILES:
        path = archive.files.get(name)
        if path:
            st = Path(path).stat()
            files[name] = [Path(path).name, st.st_size, st.st_mtime_ns]
    return {"schema_version": db.SCHEMA_VERSION, **params.as_strings(), "files": files}


def find_prepared(archive: Archive, params: FrozenParameters) -> Path | None:
    """The archive's prepared database file for ``params``, or None if none matches."""
    folder = archive.root / DIRECTORY
    try:
        key = json.loads((folder / KEY).read_text())
    except (OSError, ValueError):
        return None
    path = folder / SQLITE_NAME
    return path if key == prepared_key(archive, params) and path.is_file() else None


COPY_STEP = 1 << 28
"""Bytes copied at a time; the source's pages are let go after each step."""


def copy_prepared(source: Path, run_dir: Path) -> int:
    """Copy a prepared database into ``run_dir`` (which must not hold one); its bytes.

    Copied under a temporary name and renamed, so a copy cut short leaves no
    database behind. The copy is made in the kernel (``sendfile``), and the
    source's pages leave the page cache as it goes: the copy's pages, which
    the pipeline then reads, stay there instead. (A 15 GB database copied
    plainly on a 24 GB machine kept 12 GB of the source cached and 6 GB of
    the copy; copied this way, none of the source and 14 GB of the copy.)
    """
    target = run_dir / SQLITE_NAME
    if target.exists():
        raise FileExistsError(f"{target} exists")
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{SQLITE_NAME}.copying"
    try:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            size, done = os.fstat(src.fileno()).st_size, 0
            while done < size:
                n = os.sendfile(dst.fileno(), src.fileno(), done, min(COPY_STEP, size - done))
                if n == 0:
                    raise OSError(f"{source}: ended at byte {done} of {size} while copying")
                os.posix_fadvise(src.fileno(), done, n, os.POSIX_FADV_DONTNEED)
                done += n
            # Pages a step still held (read ahead, or just used) go now.
            os.posix_fadvise(src.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target.stat().st_size


def prepare(
    archive: Archive,
    params: FrozenParameters,
    load: Callable[[Path], int],
    say: Callable[[str], None] = lambda _msg: None,
) -> Path:
    """Make the archive's prepared database (unless a matching one is there); its file.

    ``load(run_dir)`` loads the starting catalogue into the SQLite database
    of a run directory (as a replay's preload does). It is made in a
    temporary folder and put in place whole, replacing an older one.
    """
    if not any(archive.files.get(n) for n in CATALOGUE_FILES):
        raise ValueError(f"{archive.root}: the archive has no starting catalogue to prepare")
    done = find_prepared(archive, params)
    if done is not None:
        say(f"{done} is prepared already and matches the archive")
        return done
    folder = archive.root / DIRECTORY
    tmp = archive.root / f".{DIRECTORY}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        load(tmp)
        wal = tmp / f"{SQLITE_NAME}-wal"
        if wal.exists() and wal.stat().st_size:
            raise RuntimeError(f"{wal}: the loaded database was not closed cleanly")
        (tmp / KEY).write_text(json.dumps(prepared_key(archive, params), indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"prepared {folder / SQLITE_NAME}")
    return folder / SQLITE_NAME
