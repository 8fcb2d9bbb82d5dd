"""Replay a survey: several nights, in order, into one run directory and one database.

Each night is replayed as `association.nights.replay.Replayer` replays one,
with a pipeline of its own (as at the observatory, where a night's pipeline
starts in the afternoon): its Slices load the catalogue from the database, as
the earlier nights left it. The first night's starting catalogue is preloaded;
a later night (simulated with ``--after``) brings only the catalogue of the
sky no earlier night touched, loaded beside what the pipeline stored, and
must continue the database's last night (`association.nights.preload`).

Run again on the same run directory after a crash, the sequence resumes: the
nights whose visits have all finished are skipped, and the night cut short
resumes from the journal.
"""

from __future__ import annotations

import dataclasses
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any, TextIO

from association.nights.replay import Replayer, ReplayError, ReplayOptions, replay_lock


class SequenceError(ReplayError):
    """The archives given are not a survey's nights in order; the message says why."""


def check_sequence(nights: list[Replayer]) -> None:
    """Each night continues the one before it (`SequenceError` naming both if not)."""
    for a, b in pairwise(nights):
        sa, sb = a.survey, b.survey
        if sb is None or sa is None:
            which = b if sb is None else a
            raise SequenceError(
                f"{which.archive.root}: no night of a survey; simulate the nights after the "
                "first with nightpipe simulate --after EARLIER_NIGHT"
            )
        if sb["id"] != sa["id"] or sb["after_night_mjd"] != sa["nights"][-1]:
            after = sb["after_night_mjd"]
            raise SequenceError(
                f"{b.archive.root} (night {sb['nights'][-1]:g}) does not continue "
                f"{a.archive.root} (night {sa['nights'][-1]:g})"
                + ("" if after is None else f": it continues night {after:g}")
                + ("" if sb["id"] == sa["id"] else " of another survey")
            )


def replay_nights(
    opts: ReplayOptions, archives: list[Path], out: TextIO = sys.stderr
) -> dict[str, Any]:
    """Replay ``archives`` in order into ``opts.run_dir``; a summary of them all.

    ``opts.archive`` is ignored. The summary has a replay's figures summed over
    the nights, and ``nights``: each night's own summary (``skipped`` when all
    of its visits had finished before).
    """
    if opts.address is not None and len(archives) > 1:
        raise SequenceError("--address plays one archive into a running pipeline, not a sequence")
    nights = [Replayer(dataclasses.replace(opts, archive=Path(a)), out) for a in archives]
    check_sequence(nights)
    total = sum(len(r.visits) for r in nights)
    summaries = []
    with replay_lock(Path(opts.run_dir).resolve()):
        for i, night in enumerate(nights, 1):
            night.total_visits = total
            mjd = night.archive.manifest.get("source", {}).get("night_mjd")
            name = f"night {i} of {len(nights)} ({night.archive.root.name}" + (
                f", MJD {mjd:g})" if isinstance(mjd, int | float) else ")"
            )
            finished, failed = night.finished()
            if night.visits and finished == len(night.visits):
                night.say(f"{name}: its {finished} visits finished before; skipped")
                summaries.append(_skipped(len(night.visits), failed))
                continue
            night.say(f"{name}: {len(night.visits)} visits")
            summaries.append(night.run_locked())
    return _combined(summaries)


def _skipped(visits: int, failed: int) -> dict[str, Any]:
    """The summary of a night an earlier attempt finished."""
    return {
        "skipped": True,
        "sent": 0,
        "rejected": [],
        "done": visits - failed,
        "failed": failed,
        "visits": visits,
        "visits_this_run": 0,
        "preloaded_objects": 0,
        "preload_seconds": 0.0,
        "startup_seconds": 0.0,
        "replay_seconds": 0.0,
        "wall_seconds": 0.0,
        "visits_per_minute": 0.0,
    }


def _combined(nights: list[dict[str, Any]]) -> dict[str, Any]:
    """The nights' summaries summed; their rate over the seconds they played."""
    out: dict[str, Any] = {"rejected": [r for n in nights for r in n["rejected"]]}
    for key in (
        "sent",
        "done",
        "failed",
        "visits",
        "visits_this_run",
        "preloaded_objects",
        "preload_seconds",
        "startup_seconds",
        "replay_seconds",
        "wall_seconds",
    ):
        out[key] = sum(n[key] for n in nights)
    seconds = out["replay_seconds"]
    out["visits_per_minute"] = 60.0 * out["visits_this_run"] / seconds if seconds > 0 else 0.0
    out["nights"] = nights
    return out
