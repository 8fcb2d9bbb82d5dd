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
