"""Night archives: write, read back, and clear errors for bad manifests and event lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events.archive import Archive, ArchiveError, ArchiveWriter
from events.envelope import Event

T0 = 1_790_000_000.0
"""A plausible send time (2026)."""


def _next_visit(fov: int, t: float) -> Event:
    body = {"mjd": 60218.0, "ra": 10.0, "dec": -20.0, "filter": "r"}
    return Event.new("telescope.next_visit", fov, body, "telescope", T0 + t, f"nv-{fov}")


def _write(root: Path) -> dict:
    w = ArchiveWriter(root)
    w.path_for("data/visit_1.parquet").write_bytes(b"x")
    w.path_for("catalogue/objects.parquet").write_bytes(b"o")
    w.path_for("truth/t.parquet").write_bytes(b"t")
    w.add_event(_next_visit(2, 200.0))
    w.add_event(_next_visit(1, 100.0))
    body = {"paths": ["data/visit_1.parquet"], "n_sources": 1}
    w.add_event(Event.new("detection.diasources_ready", 1, body, "detection", T0 + 150.0, "d-1"))
    return w.write_manifest(
        source={"cadence": "x.db"},
        counts={"visits": 2},
        catalogue_objects="catalogue/objects.parquet",
        truth={"t": "truth/t.parquet"},
        extra={"k": 1},
    )


def test_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "night"
    written = _write(root)
    a = Archive(root)
    assert a.manifest == written
    m = a.manifest
    assert m["format"] == "nightpipe-archive" and m["version"] == 1
    assert m["counts"] == {"visits": 2, "events": 3}
    assert m["files"] == {
        "catalogue_objects": "catalogue/objects.parquet",
        "catalogue_diasources": None,
        "truth": {"t": "truth/t.parquet"},
    }
    assert a.files["catalogue_objects"] == root.resolve() / "catalogue/objects.parquet"
    events = a.events()
    assert [e.id for e in events] == ["nv-1", "d-1", "nv-2"]
    assert [e.time - T0 for e in events] == [100.0, 150.0, 200.0]
    path = Path(events[1].body["paths"][0])
    assert path.is_absolute() and path.read_bytes() == b"x"
    assert a.raw_events()[1]["body"]["paths"] == ["data/visit_1.parquet"]
    assert a.path("truth/t.parquet").read_bytes() == b"t"


def test_archive_moves_with_its_files(tmp_path: Path) -> None:
    _write(tmp_path / "a")
    (tmp_path / "a").rename(tmp_path / "b")
    path = Path(Archive(tmp_path / "b").events()[1].body["paths"][0])
    assert path == (tmp_path / "b" / "data/visit_1.parquet").resolve()


def test_writer_rules(tmp_path: Path) -> None:
    w = ArchiveWriter(tmp_path / "n")
    for bad in ("/etc/passwd", "../x", "a/../../x"):
        body = {"paths": [bad]}
        with pytest.raises(ArchiveError, match=r"body\.paths"):
            w.add_event(Event.new("nightmops.predictions_ready", 1, body, "s", 1.0, "p"))
    with pytest.raises(ArchiveError, match="must stay inside"):
        w.path_for("../x")
    with pytest.raises(ArchiveError, match="no such file"):
        w.write_manifest(catalogue_objects="catalogue/missing.parquet")
    _write(tmp_path / "full")
    with pytest.raises(ArchiveError, match="not empty"):
        ArchiveWriter(tmp_path / "full")
    ArchiveWriter(tmp_path / "full", overwrite=True)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"format": "other", "version": 1}', "format must be 'nightpipe-archive'"),
        ('{"format": "nightpipe-archive", "version": 9, "files": {}}', "version 9 is newer"),
        ('{"format": "nightpipe-archive", "version": 1, "files": 3}', "files must be"),
        (
            '{"format": "nightpipe-archive", "version": 1, '
            '"files": {"truth": {"t": "truth/none.parquet"}}}',
            "files.truth.t: no such file",
        ),
    ],
)
def test_bad_manifest_names_the_file(tmp_path: Path, text: str, match: str) -> None:
    _write(tmp_path)
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ArchiveError, match=match) as info:
        Archive(tmp_path)
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no such archive directory"):
        Archive(tmp_path / "none")
    with pytest.raises(ArchiveError, match=r"manifest.json: no such file"):
        Archive(tmp_path)


def _replace_line(root: Path, lineno: int, text: str) -> None:
    path = root / "events.jsonl"
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_bad_events_line_names_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path)
    good = (tmp_path / "events.jsonl").read_text().splitlines()
    events_path = str(tmp_path.resolve() / "events.jsonl")

    _replace_line(tmp_path, 2, "{oops")
    with pytest.raises(ArchiveError, match="not valid JSON") as info:
        Archive(tmp_path).events()
    assert f"{events_path}:2:" in str(info.value)

    bad = json.loads(good[2])
    bad["body"]["dec"] = 95.0
    _replace_line(tmp_path, 2, good[1])
    _replace_line(tmp_path, 3, json.dumps(bad))
    with pytest.raises(ArchiveError, match=r"dec") as info:
        Archive(tmp_path).events()
    assert f"{events_path}:3:" in str(info.value)

    late = json.loads(good[0])
    late["time"] = T0 + 1000.0
    _replace_line(tmp_path, 3, good[2])
    _replace_line(tmp_path, 1, json.dumps(late))
    with pytest.raises(ArchiveError, match="time order") as info:
        Archive(tmp_path).events()
    assert f"{events_path}:2:" in str(info.value)

    escaping = json.loads(good[1])
    escaping["body"]["paths"] = ["../../etc/passwd"]
    _replace_line(tmp_path, 1, good[0])
    _replace_line(tmp_path, 2, json.dumps(escaping))
    with pytest.raises(ArchiveError, match="inside the archive") as info:
        Archive(tmp_path).events()
    assert f"{events_path}:2:" in str(info.value)
