"""The starting catalogue of a night archive, into the database, all of it or none."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from association.inputs.catalogue import read_diasources, read_objects
from association.sky.partition import Partition
from association.storage import Storage
from association.storage import tables as db

DONE = "preload"
"""The note a complete preload leaves in the database."""


class PreloadError(RuntimeError):
    """The database cannot take the starting catalogue."""


def catalogue_loaded(storage: Storage) -> bool:
    """Whether the database already holds Objects."""
    with storage.engine.connect() as conn:
        return conn.execute(select(db.objects.c.diaObjectId).limit(1)).first() is not None


def preload(
    storage: Storage,
    objects_path: str | Path,
    diasources_path: str | Path | None,
    partition: Partition | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> int:
    """Load a starting catalogue into the database; returns the Objects loaded.

    Both files are read and checked first (`association.inputs.catalogue`;
    a bad file raises `BadInputError` and loads nothing), and ``fine`` is
    derived from ``ra``/``dec`` with ``partition``'s fine order. Only when
    both are in is the preload noted as complete. A resumed replay skips a
    complete preload; one cut short (a kill, a full disk) is cleared and
    done again, never skipped.
    """
    if storage.noted(DONE) is not None:
        return 0
    if catalogue_loaded(storage):
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
    history = None
    if diasources_path is not None:
        history = read_diasources(diasources_path, objects["diaObjectId"], partition)
    storage.bulk_load_objects(objects)
    if history is not None:
        storage.bulk_load_diasources(history)
    n_history = 0 if history is None else len(history)
    storage.note(DONE, f"{len(objects)} Objects and {n_history} earlier DIASources")
    return len(objects)


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
    args = p.parse_args(argv)
    params = FrozenParameters(args.chunk_order, args.fine_order)
    try:
        with open_storage(args.db, args.run_dir, params, create=True) as storage:
            partition = Partition(params.chunk_order, params.fine_order)
            n = preload(storage, args.objects, args.diasources, partition, say=print)
    except (BadInputError, PreloadError, StorageError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
