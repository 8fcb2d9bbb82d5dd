"""The starting catalogue of a night archive, into the database."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine

from association.inputs.catalogue import read_diasources, read_objects
from association.sky.partition import Partition
from association.storage import tables as db
from association.storage.sql import bulk_load_diasources, bulk_load_objects


def catalogue_loaded(engine: Engine) -> bool:
    """Whether the database already holds Objects."""
    with engine.connect() as conn:
        return conn.execute(select(db.objects.c.diaObjectId).limit(1)).first() is not None


def preload(
    engine: Engine,
    objects_path: str | Path,
    diasources_path: str | Path | None,
    partition: Partition | None = None,
) -> int:
    """Load a starting catalogue into an empty database; returns the Objects loaded.

    Both files are read and checked first (`association.inputs.catalogue`;
    a bad file raises `BadInputError` and loads nothing), and ``fine`` is
    derived from ``ra``/``dec`` with ``partition``'s fine order. A database
    that already holds Objects is left alone (a resumed replay).
    """
    db.create_schema(engine)
    if catalogue_loaded(engine):
        return 0
    objects = read_objects(objects_path, partition)
    history = None
    if diasources_path is not None:
        history = read_diasources(diasources_path, objects["diaObjectId"], partition)
    bulk_load_objects(engine, objects)
    if history is not None:
        bulk_load_diasources(engine, history)
    return len(objects)
