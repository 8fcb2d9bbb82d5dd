"""The starting catalogue of a night archive, into the database, all of it or none.

A survey's later nights bring the catalogue of the sky no earlier night
touched (`association.nights.survey`): it is loaded beside what the pipeline
stored, as an increment. The database notes each catalogue loaded (``preload``
for the first, ``preload night MJD`` for an increment; the value is JSON:
``objects``, ``diasources``, ``from``, ``at`` in Unix seconds) and the survey
(``survey``: its ``id`` and the ``nights`` loaded, in order).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from association.inputs.catalogue import read_diasources, read_objects
from association.sky.partition import Partition
from association.storage import Storage, rows
from association.storage import tables as db

DONE = "preload"
"""The note a complete preload leaves in the database."""

SURVEY = "survey"
"""The note of the survey whose nights the database holds."""


class PreloadError(RuntimeError):
    """The database cannot take the starting catalogue."""


def catalogue_loaded(storage: Storage) -> bool:
    """Whether the database already holds Objects."""
    with storage.engine.connect() as conn:
        return conn.execute(select(db.objects.c.diaObjectId).limit(1)).first() is not None


def preload_note(night_index: int, night_mjd: float) -> str:
    """The note of a survey night's catalogue: `DONE` for the first."""
    return DONE if night_index == 0 else f"{DONE} night {night_mjd:g}"


def preload(
    storage: Storage,
    objects_path: str | Path,
    diasources_path: str | Path | None,
    partition: Partition | None = None,
    note: str = DONE,
    say: Callable[[str], None] = lambda _msg: None,
) -> int:
    """Load a starting catalogue into the database; returns the Objects loaded.

    Both files are read and checked (`association.inputs.catalogue`; a bad
    file raises `BadInputError` and loads nothing: the DIASources file is
    read while the Objects go in, and they are cleared again if it fails),
    and ``fine`` is derived from ``ra``/``dec`` with ``partition``'s fine
    order. Only when both are in is the preload noted as complete (as
    ``note``). A resumed replay skips a complete preload; one cut short (a
    kill, a full disk) is cleared and done again, never skipped.

    With a ``note`` other than `DONE`, the catalogue is a survey's increment:
    it goes in beside what is there (each file in one transaction, so one
    cut short is done again from the file not yet in).
    """
    if storage.noted(note) is not None:
        return 0
    increment = note != DONE
    if not increment and catalogue_loaded(storage):
        with storage.engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(db.visits)).scalar()
        if stored:
            raise PreloadError(
                f"database {storage.url} holds {stored} stored visit(s) and Objects but no "
                "complete preload: it is not this archive's; use a new run directory or --db"
            )
        say("a starting catalogue cut short by an earlier run was found: loading it again")
        storage.clear_catalogue()
    objects = read_objects(objects_path, partition)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The DIASources file is read while the Objects go in (the other core).
        reading = None
        if diasources_path is not None:
            shift = storage.params.chunk_shift
            reading = pool.submit(_read_history, diasources_path, objects, partition, shift)
        if increment and reading is not None:
            reading.result()  # beside stored visits nothing goes in before both files pass
        # An increment cut short is done again from the first file not in (one transaction each).
        if len(objects) and not (increment and _has(storage, db.objects.c.diaObjectId, objects)):
            storage.bulk_load_objects(objects)
        try:
            history, chunks = (None, None) if reading is None else reading.result()
        except BaseException:
            if not increment:  # a bad file loads nothing: the Objects go again
                storage.clear_catalogue()
            raise
    history_in = history is None or not len(history)
    if not (history_in or (increment and _has(storage, db.diasources.c.diaSourceId, history))):
        storage.bulk_load_diasources(history, object_chunks=chunks)
    n_history = 0 if history is None else len(history)
    value = {"objects": len(objects), "diasources": n_history, "from": str(objects_path)}
    storage.note(note, json.dumps(value | {"at": time.time()}))
    return len(objects)


def _read_history(
    path: str | Path, objects: np.ndarray, partition: Partition | None, chunk_shift: int
) -> tuple[np.ndarray, np.ndarray]:
    """The DIASources file, read, checked and put in the table's key order; their chunks.

    The sort is done here, beside the Objects' load, so that the load of
    these rows finds them in order.
    """
    history = read_diasources(path, objects["diaObjectId"], partition)
    chunk, _ = rows.diasource_chunks(history, objects["diaObjectId"], objects["fine"], chunk_shift)
    order = rows.diasource_order(history, chunk)
    return (history, chunk) if order is None else (history[order], chunk[order])


def _has(storage: Storage, key: Any, records: Any) -> bool:
    """Whether the table of id column ``key`` holds the first of ``records`` (by its id)."""
    with storage.engine.connect() as conn:
        found = conn.execute(select(key).where(key == int(records[0][key.name])))
        return found.first() is not None


def preloads(storage: Storage) -> list[dict[str, Any]]:
    """Every catalogue loaded into the database (its note's JSON and ``note``), by time."""
    n = db.notes
    with storage.engine.connect() as conn:
        rows = conn.execute(select(n.c.name, n.c.value).where(n.c.name.like(f"{DONE}%"))).all()
    out = []
    for name, value in rows:
        try:
            found = json.loads(value)
        except ValueError:  # a note of an older nightpipe: no figures
            continue
        if isinstance(found, dict):
            out.append({"note": name, **found})
    return sorted(out, key=lambda x: x.get("at", 0.0))


def survey_noted(storage: Storage) -> dict[str, Any] | None:
    """The database's survey note: ``id`` and ``nights``; None when it holds no survey."""
    value = storage.noted(SURVEY)
    return None if value is None else json.loads(value)


def check_survey(storage: Storage, survey: dict[str, Any]) -> bool:
    """Whether this survey night's catalogue is in already; an error if the night does not follow.

    ``survey`` is the archive's ``source.survey``. The database must hold
    the same survey, and its last night must be the one this night continues.
    """
    night, index = float(survey["nights"][-1]), int(survey["night_index"])
    have = survey_noted(storage)
    after = survey.get("after_night_mjd")
    if have is None:
        if index == 0:
            return False
        raise PreloadError(
            f"night {night:g} continues a survey from night {after:g}, which database "
            f"{storage.url} has not had: replay the survey's nights in order, from its "
            "first, into one run directory (nightpipe replay NIGHT1 NIGHT2 ...)"
        )
    if have["id"] != survey["id"]:
        raise PreloadError(
            f"database {storage.url} holds another survey (nights "
            f"{', '.join(f'{n:g}' for n in have['nights'])}); use a new run directory or --db"
        )
    if night in have["nights"]:
        return True
    if index == 0 or have["nights"][-1] != after:
        raise PreloadError(
            f"night {night:g} continues night {after:g}, but the last night of database "
            f"{storage.url} is {have['nights'][-1]:g}: replay the nights in order"
        )
    return False


def note_survey(storage: Storage, survey: dict[str, Any]) -> None:
    """Note that this survey night's catalogue is in."""
    have = survey_noted(storage) or {"id": survey["id"], "nights": []}
    night = float(survey["nights"][-1])
    if night not in have["nights"]:
        have["nights"].append(night)
    storage.note(SURVEY, json.dumps(have))


def main(argv: list[str] | None = None) -> int:
    """``python -m association.nights.preload RUN_DIR OBJECTS [DIASOURCES] [--db URL] ...``.

    Loads the catalogue (see `preload`) into a database made with the given
    partition and prints how many Objects it loaded. A replay runs it as a
    process of its own, so the memory of a large catalogue goes back to the
    system when done. A bad file or database is one line on stderr, exit 1.
    """
    import argparse

    from association.inputs.readers import BadInputError
    from association.storage import FrozenParameters, StorageError, open_storage

    p = argparse.ArgumentParser(prog="python -m association.nights.preload")
    p.add_argument("run_dir")
    p.add_argument("objects")
    p.add_argument("diasources", nargs="?")
    p.add_argument("--db", help="database URL (default: SQLite in the run directory)")
    p.add_argument("--chunk-order", type=int, required=True)
    p.add_argument("--fine-order", type=int, required=True)
    p.add_argument("--survey", help="the archive's source.survey, JSON: a night of a survey")
    args = p.parse_args(argv)
    params = FrozenParameters(args.chunk_order, args.fine_order)
    survey = json.loads(args.survey) if args.survey else None
    try:
        with open_storage(args.db, args.run_dir, params, create=True) as storage:
            partition = Partition(params.chunk_order, params.fine_order)
            if survey is None:
                n = preload(storage, args.objects, args.diasources, partition, say=print)
            elif check_survey(storage, survey):
                n = 0
            else:
                note = preload_note(survey["night_index"], survey["nights"][-1])
                n = preload(storage, args.objects, args.diasources, partition, note, say=print)
                note_survey(storage, survey)
    except (BadInputError, PreloadError, StorageError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
