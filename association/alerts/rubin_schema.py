"""Rubin's alert schemas, read from the installed ``lsst-alert-packet`` package.

The package (GPL-3.0) is an optional dependency: nightpipe ships none of its
files. Its ``.avsc`` files are found through the package's installed file list
and loaded with fastavro, without importing the package (whose own
dependencies are heavy and not needed): ``pip install --no-deps
lsst-alert-packet`` is enough.

A schema version is ``"MAJOR.MINOR"``; its Confluent schema id, as Rubin
registers it, is ``MAJOR * 100 + MINOR`` (1101 for 11.1).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from pathlib import Path

import fastavro

DISTRIBUTION = "lsst-alert-packet"
INSTALL_HINT = (
    "Rubin's alert schemas come from the optional package lsst-alert-packet (GPL-3.0): "
    "`pip install --no-deps lsst-alert-packet`, or `pip install 'nightpipe[alerts]'`"
)

_VERSION = re.compile(r"^(\d+)\.(\d+)$")


class SchemaNotFound(LookupError):
    """The package, or the requested version in it, is not installed."""


@functools.cache
def schema_root() -> Path:
    """The package's ``lsst/alert/packet/schema`` directory."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise SchemaNotFound(INSTALL_HINT) from None
    for f in dist.files or ():
        if f.name == "latest.txt" and f.parent.name == "schema":
            return Path(str(dist.locate_file(f))).parent
    raise SchemaNotFound(f"{DISTRIBUTION} {dist.version} has no schema/latest.txt")


def parse_version(version: str) -> tuple[int, int]:
    """``"11.1"`` -> ``(11, 1)``; anything else is a ValueError."""
    m = _VERSION.match(str(version).strip())
    if not m:
        raise ValueError(f"alert schema version must be MAJOR.MINOR, e.g. '11.1'; got {version!r}")
    return int(m[1]), int(m[2])


def latest_version() -> str:
    """The package's latest schema version, from its ``latest.txt``."""
    text = (schema_root() / "latest.txt").read_text().strip()
    major, minor = parse_version(text)
    return f"{major}.{minor}"


def available_versions() -> list[str]:
    """Every version the package ships, oldest first."""
    found = []
    for path in schema_root().glob("*/*/lsst.v*_*.alert.avsc"):
        found.append((int(path.parent.parent.name), int(path.parent.name)))
    return [f"{a}.{b}" for a, b in sorted(found)]


def schema_id(version: str) -> int:
    """The Confluent schema id of a version: ``MAJOR * 100 + MINOR``."""
    major, minor = parse_version(version)
    if not 0 <= minor < 100:
        raise ValueError(f"minor version {minor} does not fit the schema id")
    return major * 100 + minor


def version_of_id(sid: int) -> str:
    """The version a schema id stands for (inverse of `schema_id`)."""
    return f"{sid // 100}.{sid % 100}"


def schema_path(version: str | None = None) -> Path:
    """The alert record's ``.avsc`` of `version` (default: the latest)."""
    version = version or latest_version()
    major, minor = parse_version(version)
    path = schema_root() / str(major) / str(minor) / f"lsst.v{major}_{minor}.alert.avsc"
    if not path.is_file():
        raise SchemaNotFound(
            f"alert schema {version} is not in {DISTRIBUTION} (it has {available_versions()})"
        )
    return path


@functools.cache
def load_alert_schema(version: str | None = None) -> dict:
    """The parsed alert schema of `version` (default: the latest), as fastavro loads it.

    The record's named types are read from the ``.avsc`` files beside it.
    """
    return fastavro.schema.load_schema(str(schema_path(version)))
