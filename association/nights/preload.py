"""The starting catalogue of a night archive, into the database."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from sqlalchemy import select

from association.columns import BANDS, DIASOURCE_DTYPE, OBJECT_DTYPE, band_index
from association.storage import Storage
from association.storage import tables as db


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


def catalogue_loaded(storage: Storage) -> bool:
    """Whether the database already holds Objects."""
    with storage.engine.connect() as conn:
        return conn.execute(select(db.objects.c.diaObjectId).limit(1)).first() is not None


def preload(storage: Storage, objects_path: str | Path, diasources_path: str | Path | None) -> int:
    """Load a starting catalogue into an empty database; returns the Objects loaded.

    A database that already holds Objects is left alone (a resumed replay).
    """
    if catalogue_loaded(storage):
        return 0
    objects = read_objects(objects_path)
    storage.bulk_load_objects(objects)
    if diasources_path is not None:
        storage.bulk_load_diasources(read_diasources_table(diasources_path))
    return len(objects)
