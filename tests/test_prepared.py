"""``nightpipe prepare``: an archive's starting catalogue loaded once, copied by each replay."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from association.cli.main import main
from association.nights.replay import Replayer, ReplayError, ReplayOptions
from association.storage import SQLITE_NAME, default_url
from tests.databases import table_rows
from tests.nights import copy_archive


def _preload(archive: Path, run: Path) -> str:
    """A replay's preload into ``run``; what it said."""
    out = io.StringIO()
    Replayer(ReplayOptions(archive, run), out=out).preload()
    return out.getvalue()


def _rows(run: Path) -> dict[str, set[tuple]]:
    engine = create_engine(default_url(run))
    try:
        return table_rows(engine)
    finally:
        engine.dispose()


def test_a_replay_starts_from_the_prepared_database(pole_archive: Path, tmp_path: Path) -> None:
    archive = copy_archive(pole_archive, tmp_path / "archive")
    assert main(["prepare", str(archive)]) == 0
    prepared = archive / "prepared" / SQLITE_NAME
    assert prepared.is_file() and (archive / "prepared" / "key.json").is_file()
    assert not list(archive.glob(".prepared*"))  # made aside, put in place whole

    said = _preload(archive, tmp_path / "copied")
    assert "copying the archive's prepared starting database" in said
    # the same starting database as loading the catalogue
    os.rename(archive / "prepared", tmp_path / "aside")
    said = _preload(archive, tmp_path / "loaded")
    assert "copying" not in said and "loaded" in said
    assert _rows(tmp_path / "copied") == _rows(tmp_path / "loaded")
    os.rename(tmp_path / "aside", archive / "prepared")

    # a catalogue file changed since: the prepared database is not used
    objects = next((archive / "catalogue").glob("objects*"))
    os.utime(objects, ns=(objects.stat().st_atime_ns, objects.stat().st_mtime_ns + 10**9))
    assert "copying" not in _preload(archive, tmp_path / "changed")
    # nor under another partition
    assert main(["prepare", str(archive)]) == 0  # made again for the file as it is now
    other = ReplayOptions(archive, tmp_path / "other", sets=["settings.fine_order=18"])
    out = io.StringIO()
    with pytest.raises(ReplayError, match="fine_order=20"):  # refused, not copied
        Replayer(other, out=out).preload()
    assert "copying" not in out.getvalue()
    assert not (tmp_path / "other" / SQLITE_NAME).exists()


def _cached_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore(2) on a mapping of it)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = ctypes.create_string_buffer(pages)
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec.raw)
        finally:
            libc.munmap(addr, size)


def test_the_copy_keeps_the_copy_cached_not_the_source(tmp_path: Path, monkeypatch) -> None:
    """The copy is exact, made in steps, and the source's pages leave the page cache."""
    from association.nights import prepared

    monkeypatch.setattr(prepared, "COPY_STEP", 1 << 20)
    source = tmp_path / "prepared.sqlite"
    data = os.urandom(5 << 20) + b"end"  # not a whole number of steps
    source.write_bytes(data)
    os.sync()  # written back: clean pages, which the kernel can let go
    assert source.read_bytes() == data
    assert _cached_pages(source) > 1000  # just read: cached
    run = tmp_path / "run"
    assert prepared.copy_prepared(source, run) == len(data)
    assert (run / SQLITE_NAME).read_bytes() == data
    assert [p.name for p in run.iterdir()] == [SQLITE_NAME]
    assert _cached_pages(source) <= 2
    assert _cached_pages(run / SQLITE_NAME) > 1000
    with pytest.raises(FileExistsError):
        prepared.copy_prepared(source, run)
