"""The starting catalogue of a night archive, into the database."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.engine import Engine

from association.columns import BANDS, DIASOURCE_DTYPE, OBJECT_DTYPE, band_index
from association.storage import tables as db
from association.storage.sql import bulk_load_diasources, bulk_load_objects


def read_objects(path: str | Path) -> np.ndarray:
    """Objects from a flat table (band columns ``{b}_psfFluxMean`` ...) as OBJECT_DTYPE."""
    table = pq.read_table(path)
    out = np.zeros(table.num_rows, OBJECT_DTYPE)
    for name in OBJECT_DTYPE.names:
        if OBJECT_DTYPE[name].shape:
            for i, b in enumerate(BANDS):
                out[name][:, i] = table.column(f"{b}_{name}").to_numpy()
        else:
            out[name] = table.column(name).to_numpy()
    return out


def read_diasources_table(path: str | Path) -> np.ndarray:
    """DIASources written with band names, as DIASOURCE_DTYPE."""
    table = pq.read_table(path)
    out = np.zeros(table.num_rows, DIASOURCE_DTYPE)
    for name in DIASOURCE_DTYPE.names:
        col = table.column(name).to_numpy(zero_copy_only=False)
        out[name] = band_index(col) if name == "band" else col
    return out


def catalogue_loaded(engine: Engine) -> bool:
    """Whether the database already holds Objects."""
    with engine.connect() as conn:
        return conn.execute(select(db.objects.c.diaObjectId).limit(1)).first() is not None


def preload(engine: Engine, objects_path: str | Path, diasources_path: str | Path | None) -> int:
    """Load a starting catalogue into an empty database; returns the Objects loaded.

    A database that already holds Objects is left alone (a resumed replay).
    """
    db.create_schema(engine)
    if catalogue_loaded(engine):
        return 0
    objects = read_objects(objects_path)
    bulk_load_objects(engine, objects)
    if diasources_path is not None:
        bulk_load_diasources(engine, read_diasources_table(diasources_path))
    return len(objects)


def main(argv: list[str] | None = None) -> int:
    """``python -m association.nights.preload RUN_DIR OBJECTS [DIASOURCES] [--db URL]``.

    Loads the catalogue (see `preload`) and prints how many Objects it loaded.
    A replay runs it as a process of its own, so the memory of a large
    catalogue goes back to the system when done.
    """
    import argparse

    from association.storage.tables import make_engine

    p = argparse.ArgumentParser(prog="python -m association.nights.preload")
    p.add_argument("run_dir")
    p.add_argument("objects")
    p.add_argument("diasources", nargs="?")
    p.add_argument("--db", help="database URL (default: SQLite in the run directory)")
    args = p.parse_args(argv)
    engine = make_engine(args.db, args.run_dir)
    try:
        print(preload(engine, args.objects, args.diasources))
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
