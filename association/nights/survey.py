"""A survey of several nights: what a simulated night leaves of the sky for the next one.

Every simulated archive carries the survey's state after its night in
``survey/`` and says where it stands in ``manifest.json``'s
``source.survey``, so that ``nightpipe simulate NEXT --after ARCHIVE`` can
continue from it:

- ``survey/patches.parquet``: ``patch`` (int64), the catalogue patches whose
  starting catalogue this night or an earlier one has written;
- ``survey/movers.parquet``: every mover so far, with its orbit (``ra``,
  ``dec`` at its own ``mjd0``, ``rate``, ``direction``) and ``snr``;
- ``survey/transients.parquet``: every transient so far, with ``mjdStart``,
  ``mjdEnd`` and its signal-to-noise at the start, ``snr``.

``source.survey`` is ``{"id", "night_index", "first_night_mjd", "nights",
"after_night_mjd", "files"}``: the survey's identity (its cadence, first night,
seed and sky settings), the night's place (0 for the first), every night so far
in order (this one last), the night it continues (None for the first) and the
state files above.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from events.archive import Archive, ArchiveError

FILES = {
    "patches": "survey/patches.parquet",
    "movers": "survey/movers.parquet",
    "transients": "survey/transients.parquet",
}
"""The survey's state files in an archive."""


class SurveyError(ValueError):
    """An archive cannot be continued, or a night does not continue it; the message says why."""


@dataclass
class SurveyState:
    """The sky as a night of the survey leaves it.

    Attributes
    ----------
    id : str
        The survey's identity: equal for every night of one survey.
    first_night : float
        The first night's start (MJD); the starting catalogue's history is before it.
    nights : list of float
        The nights so far, in order; the last is the archive's own.
    patches : ndarray of int64
        Sorted patches whose starting catalogue has been written.
    movers : dict of ndarray
        Every mover: ``ssObjectId``, its orbit and truth columns, ``mjd0``, ``snr``.
    transients : dict of ndarray
        Every transient: ``transientId``, ``ra``, ``dec``, ``mjdStart``, ``mjdEnd``, ``snr``.
    """

    id: str
    first_night: float
    nights: list[float]
    patches: np.ndarray
    movers: dict[str, np.ndarray]
    transients: dict[str, np.ndarray]

    @property
    def index(self) -> int:
        """The archive's night's place in the survey: 0 for the first."""
        return len(self.nights) - 1


def survey_id(cadence: str, first_night: float, config: dict[str, Any]) -> str:
    """The identity of a survey: its cadence file's name, first night, seed and sky settings."""
    text = json.dumps([cadence, float(first_night), config], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def survey_of(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """An archive manifest's ``source.survey``, or None for a night of no survey."""
    found = manifest.get("source", {}).get("survey")
    return found if isinstance(found, dict) else None


def read_state(path: str | PathLike[str]) -> tuple[SurveyState, dict[str, Any]]:
    """The survey state an archive leaves, and its ``source`` (cadence, seed, config).

    Raises
    ------
    SurveyError
        When the archive is no simulated night of a survey, or its state files
        are missing.
    """
    try:
        archive = Archive(path)
    except ArchiveError as exc:
        raise SurveyError(str(exc)) from None
    source = archive.manifest["source"]
    info = survey_of(archive.manifest)
    if info is None or "config" not in source:
        raise SurveyError(
            f"{archive.manifest_path}: no survey state (source.survey); only a night "
            "simulated by this nightpipe can be continued"
        )
    tables = {}
    for name, rel in FILES.items():
        file = archive.root / rel
        if not file.is_file():
            raise SurveyError(f"{archive.manifest_path}: the survey state file {rel} is missing")
        table = pq.read_table(file)
        tables[name] = {c: table[c].to_numpy() for c in table.column_names}
    state = SurveyState(
        id=str(info["id"]),
        first_night=float(info["first_night_mjd"]),
        nights=[float(n) for n in info["nights"]],
        patches=np.asarray(tables["patches"]["patch"], dtype="i8"),
        movers=tables["movers"],
        transients=tables["transients"],
    )
    return state, source


def write_state(root: Path, state: SurveyState, after: float | None) -> dict[str, Any]:
    """Write the state files under ``root``; the manifest's ``source.survey``."""
    for name, columns in (
        ("patches", {"patch": np.asarray(state.patches, dtype="i8")}),
        ("movers", state.movers),
        ("transients", state.transients),
    ):
        path = root / FILES[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)
    return {
        "id": state.id,
        "night_index": state.index,
        "first_night_mjd": state.first_night,
        "nights": list(state.nights),
        "after_night_mjd": after,
        "files": dict(FILES),
    }
