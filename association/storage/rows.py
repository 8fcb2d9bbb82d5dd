"""Between the pipeline's numpy records and the tables' columns, for every backend."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from association import records as rec
from association.columns import BANDS, DIASOURCE_DTYPE, OBJECT_DTYPE
from association.storage import tables
from association.storage.interface import COLUMN_KINDS

_KIND_ALIASES = {"i": "i8", "f": "f8"}


def column_kinds(kinds: dict[str, str]) -> dict[str, str]:
    """``kinds`` with the aliases spelt out; ValueError for a kind not in `COLUMN_KINDS`."""
    kinds = {name: _KIND_ALIASES.get(k, k) for name, k in kinds.items()}
    unknown = set(kinds.values()) - set(COLUMN_KINDS)
    if unknown:
        raise ValueError(f"column kinds {sorted(unknown)} not among {COLUMN_KINDS}")
    return kinds


def kind_of(dtype: np.dtype) -> str:
    """The column kind that reads into ``dtype``."""
    return "i1" if dtype.kind == "b" else f"{dtype.kind}{dtype.itemsize}"


def object_field(column: str) -> tuple[str, int | None]:
    """The OBJECT_DTYPE field of an objects-table column, and its band index or None.

    ``r_psfFluxMean`` -> (``psfFluxMean``, 2); ``ra`` -> (``ra``, None).
    """
    if column in OBJECT_DTYPE.names:
        return column, None
    band, field = column.split("_", 1)
    return field, BANDS.index(band)


REPEATED_FROM = 2
"""An Object with this many DIASources or more is stored as ``repeated``."""

OBJECT_KINDS = {
    c.name: kind_of(OBJECT_DTYPE[object_field(c.name)[0]].base)
    for c in tables.objects.columns
    if c.name != "repeated"
}
"""The ``objects`` table's columns read into OBJECT_DTYPE and the kinds they are read as."""

DIASOURCE_KINDS = {name: kind_of(DIASOURCE_DTYPE[name]) for name in DIASOURCE_DTYPE.names}
"""DIASOURCE_DTYPE's fields and the kinds they are read as."""


def repeated(objects: np.ndarray) -> np.ndarray:
    """The ``repeated`` column of OBJECT_DTYPE records: 1 from `REPEATED_FROM` DIASources."""
    return (objects["nDiaSources"] >= REPEATED_FROM).astype(np.int8)


def newly_repeated(objects: np.ndarray, diasources: np.ndarray) -> np.ndarray:
    """diaObjectId of the ``objects`` that became repeated with a visit's ``diasources``.

    Their stored rows, from before the visit, are among the once-seen ones.
    """
    ids, counts = np.unique(diasources["diaObjectId"], return_counts=True)
    at = np.searchsorted(ids, objects["diaObjectId"]).clip(0, max(len(ids) - 1, 0))
    found = (ids[at] == objects["diaObjectId"]) if len(ids) else np.zeros(len(objects), bool)
    before = objects["nDiaSources"] - np.where(found, counts[at] if len(ids) else 0, 0)
    return objects["diaObjectId"][
        (objects["nDiaSources"] >= REPEATED_FROM) & (before < REPEATED_FROM)
    ]


def object_columns(objects: np.ndarray) -> dict[str, np.ndarray]:
    """The ``objects`` table's columns: views into OBJECT_DTYPE records, and ``repeated``."""
    out = {}
    for c in tables.objects.columns:
        if c.name == "repeated":
            out[c.name] = repeated(objects)
            continue
        field, band = object_field(c.name)
        out[c.name] = objects[field] if band is None else objects[field][:, band]
    return out


def diasource_columns(diasources: np.ndarray, chunk: np.ndarray) -> dict[str, np.ndarray]:
    """The ``diasources`` table's columns: views into DIASOURCE_DTYPE records, and ``chunk``.

    ``chunk`` is each DIASource's (`diasource_chunks`).
    """
    return {
        c.name: chunk if c.name == "chunk" else diasources[c.name]
        for c in tables.diasources.columns
    }


def diasource_chunks(
    diasources: np.ndarray,
    object_ids: np.ndarray,
    object_fine: np.ndarray,
    chunk_shift: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The chunk each DIASource is stored under: its Object's, by ``object_fine``.

    Parameters
    ----------
    diasources : ndarray of DIASOURCE_DTYPE
        The DIASources.
    object_ids, object_fine : ndarray
        Objects' diaObjectId and fine index, in any order.
    chunk_shift : int
        ``fine >> chunk_shift`` is a chunk.

    Returns
    -------
    chunk : ndarray of int64
        Each DIASource's chunk; where it has no Object (``diaObjectId`` 0),
        the chunk of its own position.
    unknown : ndarray of int64
        The Object ids among the DIASources' not in ``object_ids``; their
        DIASources' chunk is left as their own until the caller finds them.
    """
    order = np.argsort(object_ids, kind="stable")
    ids, fine = object_ids[order], object_fine[order]
    wanted = diasources["diaObjectId"]
    at = np.minimum(np.searchsorted(ids, wanted), max(len(ids) - 1, 0))
    found = (wanted != 0) & (ids[at] == wanted) if len(ids) else np.zeros(len(wanted), bool)
    chunk = np.where(found, fine[at] if len(ids) else 0, diasources["fine"]) >> chunk_shift
    unknown = np.unique(wanted[~found & (wanted != 0)])
    return chunk.astype(np.int64), unknown


def objects_from_columns(
    cols: dict[str, np.ndarray], order: np.ndarray | None = None
) -> np.ndarray:
    """OBJECT_DTYPE records from the ``objects`` table's columns, ordered by diaObjectId.

    Or in ``order`` (indices into the columns) when given.
    """
    if order is None:
        order = np.argsort(cols["diaObjectId"], kind="stable")
    out = np.empty(len(order), dtype=OBJECT_DTYPE)
    # Reorder column by column through one reused buffer per type: much faster
    # than reordering the 193-byte records, and fresh memory is slow to touch.
    buffers: dict[np.dtype, np.ndarray] = {}
    for name, values in cols.items():
        buf = buffers.setdefault(values.dtype, np.empty(len(order), dtype=values.dtype))
        np.take(values, order, out=buf)
        field, band = object_field(name)
        if band is None:
            out[field] = buf
        else:
            out[field][:, band] = buf
    return out


def diasources_from_columns(cols: dict[str, np.ndarray]) -> np.ndarray:
    """DIASOURCE_DTYPE records from columns named as its fields, in their order."""
    out = np.empty(len(cols["diaSourceId"]), dtype=DIASOURCE_DTYPE)
    for name, values in cols.items():
        out[name] = values
    return out


def latest_per_object(diasources: np.ndarray, per_object: int) -> np.ndarray:
    """Each Object's latest ``per_object`` DIASources, by (diaObjectId, midpointMjdTai, diaSourceId).

    Each Object's DIASources must come in (midpointMjdTai, diaSourceId) order.
    """
    out = rec.take(diasources, np.argsort(diasources["diaObjectId"], kind="stable"))
    return rec.trim(out, per_object)


def object_order(objects: np.ndarray) -> np.ndarray | None:
    """Objects in primary-key order, (repeated, fine, diaObjectId) (see `key_order`)."""
    return key_order(repeated(objects), objects["fine"], objects["diaObjectId"])


def diasource_order(diasources: np.ndarray, chunk: np.ndarray) -> np.ndarray | None:
    """DIASources of chunks ``chunk`` in primary-key order (see `key_order`)."""
    return key_order(chunk, diasources["midpointMjdTai"], diasources["diaSourceId"])


def key_order(*keys: np.ndarray) -> np.ndarray | None:
    """The order sorting rows by ``keys`` (most significant first); None if sorted.

    One stable sort per key, the least significant first, as a radix sort
    does: a key already in order (often the unique id) costs one pass, small
    integers sort by radix, and rows equal in every key keep their order.
    """
    n = len(keys[0])
    if n < 2 or _sorted_by(keys):
        return None
    order = np.argsort(keys[-1], kind="stable")
    for key in keys[-2::-1]:
        ranked = key[order]
        if (
            ranked.dtype.kind in "iu"
            and ranked.size
            and ranked.min() >= 0
            and ranked.max() < 1 << 16
        ):
            ranked = ranked.astype(np.uint16)  # numpy sorts 16-bit integers by radix
        order = order[np.argsort(ranked, kind="stable")]
    return order


def _sorted_by(keys: Sequence[np.ndarray]) -> bool:
    """Whether the rows are in order of ``keys`` (most significant first)."""
    undecided = np.ones(len(keys[0]) - 1, dtype=bool)
    for key in keys:
        step = np.diff(key)
        if (step[undecided] < 0).any():
            return False
        undecided &= step == 0
    return True


def check_bands(band: np.ndarray) -> None:
    """ValueError naming the first DIASource whose band index is not one of `BANDS`."""
    bad = np.flatnonzero((band < 0) | (band >= len(BANDS)))
    if bad.size:
        raise ValueError(f"diasources row {bad[0]}: band index {band[bad[0]]} not in 0..5")


def check_visit(visits: np.ndarray, visit: int, what: str) -> None:
    """ValueError naming the first row of ``what`` that is not of ``visit``."""
    bad = np.flatnonzero(visits != visit)
    if bad.size:
        raise ValueError(f"{what} row {bad[0]}: visit {visits[bad[0]]}, storing visit {visit}")


def records(x: np.ndarray | Sequence[np.ndarray] | None, dtype: np.dtype) -> np.ndarray:
    """A structured array of ``dtype`` from one, from a tuple of columns, or None."""
    if x is None:
        return np.empty(0, dtype=dtype)
    if isinstance(x, np.ndarray) and x.dtype.names:
        out = np.empty(len(x), dtype=dtype)
        for name in dtype.names:
            out[name] = x[name]
        return out
    if len(x) != len(dtype.names):
        raise ValueError(f"expected arrays {dtype.names}, got {len(x)} arrays")
    out = np.empty(len(x[0]), dtype=dtype)
    for name, col in zip(dtype.names, x, strict=True):
        out[name] = col
    return out


def tuples(
    columns: dict[str, np.ndarray],
    take: slice | np.ndarray = slice(None),
    texts: dict[str, Sequence[str]] | None = None,
) -> list[tuple]:
    """Rows ``take`` of the columns as tuples of Python values (NaN as None).

    A column named in ``texts`` holds indices into its strings.
    """
    texts = texts or {}
    cols = []
    for name, values in columns.items():
        values = values[take]
        if name in texts:
            cols.append(np.asarray(list(texts[name]))[values].tolist())
        else:
            cols.append(_pylist(values))
    return list(zip(*cols, strict=True))


def object_rows(objects: np.ndarray) -> list[tuple]:
    """Objects as tuples in the column order of the ``objects`` table."""
    return tuples(object_columns(objects))


def _pylist(values: np.ndarray) -> list:
    """Python values of a column, NaN as None."""
    if values.dtype.kind == "f":
        nan = np.isnan(values)
        if nan.any():
            out = values.astype(object)
            out[nan] = None
            return out.tolist()
    return values.tolist()
