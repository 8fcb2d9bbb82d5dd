"""Night archives: a directory holding a night's events, the files they point to, and truth.

Layout::

    ARCHIVE/manifest.json   format, version, creation time, source, counts, files, extra
    ARCHIVE/events.jsonl    one event envelope per line, in time order
    ARCHIVE/...             data and truth files, anywhere below the directory

Every path stored in the archive (manifest ``files`` and the ``path`` /
``paths`` fields of event bodies) is relative to the archive directory, so an
archive can be moved or copied as a whole. `Archive` resolves them to
absolute paths on reading.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any

from events.envelope import Event

FORMAT = "nightpipe-archive"
VERSION = 1
MANIFEST = "manifest.json"
EVENTS = "events.jsonl"
FILE_KEYS = ("catalogue_objects", "catalogue_diasources", "truth")
BODY_PATH_KEYS = ("path", "paths")

StrPath = str | PathLike[str]


class ArchiveError(ValueError):
    """An archive is malformed, or a writer was asked for something it cannot do."""


def _check_rel(rel: Any, where: str) -> str:
    """Return `rel` as a clean POSIX relative path that stays inside the archive."""
    if not isinstance(rel, str) or not rel:
        raise ArchiveError(f"{where}: path must be a non-empty string, got {rel!r}")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or Path(rel).is_absolute():
        raise ArchiveError(f"{where}: path must be relative to the archive, got {rel!r}")
    if ".." in p.parts:
        raise ArchiveError(f"{where}: path must stay inside the archive, got {rel!r}")
    return p.as_posix()


def _map_body_paths(body: dict[str, Any], fn: Any, where: str) -> dict[str, Any]:
    """Apply ``fn(rel, where)`` to the ``path`` and ``paths`` entries of a body."""
    out = dict(body)
    if "path" in body:
        out["path"] = fn(body["path"], f"{where}: body.path")
    if "paths" in body:
        paths = body["paths"]
        if not isinstance(paths, list):
            raise ArchiveError(f"{where}: body.paths must be a list, got {type(paths).__name__}")
        out["paths"] = [fn(p, f"{where}: body.paths[{i}]") for i, p in enumerate(paths)]
    return out


class ArchiveWriter:
    """Build a night archive in a directory.

    Events are kept in memory and written, sorted by time (stably), by
    `write_manifest`, which finishes the archive.

    Parameters
    ----------
    path : str or Path
        The archive directory; created if missing.
    overwrite : bool
        Allow a non-empty directory (files of the same names are replaced;
        others are left alone).
    """

    def __init__(self, path: StrPath, overwrite: bool = False) -> None:
        self.path = Path(path).resolve()
        if self.path.exists() and not self.path.is_dir():
            raise ArchiveError(f"{self.path}: exists and is not a directory")
        if self.path.is_dir() and any(self.path.iterdir()) and not overwrite:
            raise ArchiveError(f"{self.path}: directory is not empty (use overwrite=True)")
        self.path.mkdir(parents=True, exist_ok=True)
        self._events: list[Event] = []

    def path_for(self, rel: str) -> Path:
        """Absolute path of `rel` inside the archive; its parent directory is created."""
        p = self.path / _check_rel(rel, str(self.path))
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def rel(self, path: StrPath) -> str:
        """The archive-relative POSIX path of an absolute path inside the archive."""
        try:
            return Path(path).resolve().relative_to(self.path).as_posix()
        except ValueError:
            raise ArchiveError(f"{path}: not inside the archive {self.path}") from None

    def add_event(self, event: Event) -> None:
        """Add one event; body ``path``/``paths`` must be relative to the archive."""
        if not math.isfinite(event.time):
            raise ArchiveError(f"event {event.id!r}: time must be finite, got {event.time!r}")
        _map_body_paths(event.body, _check_rel, f"event {event.id!r}")
        self._events.append(event)

    @property
    def n_events(self) -> int:
        """Number of events added so far."""
        return len(self._events)

    def write_manifest(
        self,
        source: dict[str, Any] | None = None,
        counts: dict[str, Any] | None = None,
        catalogue_objects: str | None = None,
        catalogue_diasources: str | None = None,
        truth: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        created: str | None = None,
    ) -> dict[str, Any]:
        """Write ``events.jsonl`` and ``manifest.json``; return the manifest.

        Parameters
        ----------
        source : dict, optional
            Where the night came from (free form, JSON-able).
        counts : dict, optional
            Counts of what the archive holds; ``events`` is added if missing.
        catalogue_objects, catalogue_diasources : str, optional
            Relative paths of the starting catalogue files.
        truth : dict, optional
            Name -> relative path of truth files.
        extra : dict, optional
            Anything else (free form, JSON-able).
        created : str, optional
            ISO time of creation; now (UTC) by default.
        """
        files: dict[str, Any] = {
            "catalogue_objects": None,
            "catalogue_diasources": None,
            "truth": {},
        }
        for key, rel in (
            ("catalogue_objects", catalogue_objects),
            ("catalogue_diasources", catalogue_diasources),
        ):
            if rel is not None:
                files[key] = self._existing(rel, f"files.{key}")
        for name, rel in (truth or {}).items():
            files["truth"][name] = self._existing(rel, f"files.truth.{name}")
        counts = dict(counts or {})
        counts.setdefault("events", len(self._events))
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created": created or datetime.now(UTC).isoformat(timespec="seconds"),
            "source": dict(source or {}),
            "counts": counts,
            "files": files,
            "extra": dict(extra or {}),
        }
        ordered = sorted(self._events, key=lambda e: e.time)
        with open(self.path / EVENTS, "w", encoding="utf-8") as f:
            for e in ordered:
                f.write(e.to_json() + "\n")
        with open(self.path / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.write("\n")
        return manifest

    def _existing(self, rel: str, where: str) -> str:
        rel = _check_rel(rel, f"{self.path / MANIFEST}: {where}")
        if not (self.path / rel).is_file():
            raise ArchiveError(f"{self.path / MANIFEST}: {where}: no such file {rel!r}")
        return rel


class Archive:
    """Read a night archive.

    Parameters
    ----------
    path : str or Path
        The archive directory.

    Raises
    ------
    ArchiveError
        When the directory, the manifest or a file it names is missing or
        malformed; the message names the file.
    """

    def __init__(self, path: StrPath) -> None:
        self.root = Path(path).resolve()
        if not self.root.is_dir():
            raise ArchiveError(f"{self.root}: no such archive directory")
        self.manifest_path = self.root / MANIFEST
        self.events_path = self.root / EVENTS
        self.manifest = self._read_manifest()

    def path(self, rel: str) -> Path:
        """Absolute path of an archive-relative path."""
        return self.root / _check_rel(rel, str(self.root))

    @property
    def files(self) -> dict[str, Any]:
        """The manifest's ``files`` entry, relative paths made absolute (None stays None)."""
        f = self.manifest["files"]
        out: dict[str, Any] = {k: None if f[k] is None else self.path(f[k]) for k in FILE_KEYS[:2]}
        out["truth"] = {k: self.path(v) for k, v in f["truth"].items()}
        return out

    def raw_events(self) -> list[dict[str, Any]]:
        """The event lines as decoded JSON objects, paths left relative."""
        return [d for _, d in self._lines()]

    def events(self) -> list[Event]:
        """The events, validated, in file order, body paths made absolute.

        Raises
        ------
        ArchiveError
            Naming ``events.jsonl`` and the line of the first bad event, or
            the first event out of time order.
        """
        parse = _parser()
        out: list[Event] = []
        last = -math.inf
        for lineno, d in self._lines():
            where = f"{self.events_path}:{lineno}"
            try:
                e = parse(d)
            except (ValueError, KeyError, TypeError) as exc:
                raise ArchiveError(f"{where}: {exc}") from None
            if e.time < last:
                raise ArchiveError(
                    f"{where}: event {e.id!r} at time {e.time} is earlier than the line before "
                    f"({last}); events must be in time order"
                )
            last = e.time
            body = _map_body_paths(
                e.body, lambda rel, w: str(self.root / _check_rel(rel, w)), where
            )
            out.append(dataclasses.replace(e, body=body))
        return out

    def _lines(self) -> list[tuple[int, dict[str, Any]]]:
        if not self.events_path.is_file():
            raise ArchiveError(f"{self.events_path}: no such file")
        out = []
        with open(self.events_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{self.events_path}:{lineno}"
                try:
                    d = json.loads(line)
                except ValueError as exc:
                    raise ArchiveError(f"{where}: not valid JSON: {exc}") from None
                if not isinstance(d, dict):
                    raise ArchiveError(f"{where}: must be a JSON object, got {type(d).__name__}")
                out.append((lineno, d))
        return out

    def _read_manifest(self) -> dict[str, Any]:
        where = str(self.manifest_path)
        if not self.manifest_path.is_file():
            raise ArchiveError(f"{where}: no such file; is {self.root} a night archive?")
        try:
            m = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ArchiveError(f"{where}: not valid JSON: {exc}") from None
        if not isinstance(m, dict):
            raise ArchiveError(f"{where}: must be a JSON object, got {type(m).__name__}")
        if m.get("format") != FORMAT:
            raise ArchiveError(f"{where}: format must be {FORMAT!r}, got {m.get('format')!r}")
        version = m.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ArchiveError(f"{where}: version must be an integer, got {version!r}")
        if version > VERSION:
            raise ArchiveError(
                f"{where}: version {version} is newer than this nightpipe reads ({VERSION})"
            )
        for key in ("source", "counts", "extra"):
            if not isinstance(m.setdefault(key, {}), dict):
                raise ArchiveError(f"{where}: {key} must be a JSON object")
        files = m.get("files")
        if not isinstance(files, dict):
            raise ArchiveError(f"{where}: files must be a JSON object, got {files!r}")
        for key in FILE_KEYS[:2]:
            rel = files.setdefault(key, None)
            if rel is not None:
                self._check_file(rel, f"files.{key}")
        truth = files.setdefault("truth", {})
        if not isinstance(truth, dict):
            raise ArchiveError(f"{where}: files.truth must be a JSON object, got {truth!r}")
        for name, rel in truth.items():
            self._check_file(rel, f"files.truth.{name}")
        return m

    def _check_file(self, rel: Any, key: str) -> None:
        where = f"{self.manifest_path}: {key}"
        if not (self.root / _check_rel(rel, where)).is_file():
            raise ArchiveError(f"{where}: no such file {rel!r} in {self.root}")


def _parser() -> Any:
    """`events.validate.parse_event` when present, else a minimal envelope check."""
    try:
        from events.validate import parse_event
    except ImportError:
        return _parse_minimal
    return parse_event


def _parse_minimal(d: dict[str, Any]) -> Event:
    for key in ("id", "type", "time", "source"):
        if key not in d:
            raise ValueError(f"field {key}: required field missing")
    t = d["time"]
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise ValueError(f"field time: must be a finite number, got {t!r}")
    if not isinstance(d.get("body", {}), dict):
        raise ValueError("field body: must be a JSON object")
    return Event.from_dict(d)
