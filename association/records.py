"""Row helpers on the packed record arrays of `association.columns`: fast moves, canonical order, grouping.

Row copies of the packed record dtypes go field by field in numpy, ten times
slower than moving the same bytes as opaque records; every bulk row move of
the catalogue and of the storage's reads goes through `take`, `assign`,
`concat`, `insert`, `delete`.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

import numpy as np

I8 = np.dtype("i8")


def raw(a: np.ndarray) -> np.ndarray:
    """``a`` viewed as opaque records of its item size."""
    return a.view(np.dtype((np.void, a.dtype.itemsize)))


def take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a[idx]`` for record arrays (integer or boolean ``idx``)."""
    return raw(a)[idx].view(a.dtype)


def copy(a: np.ndarray) -> np.ndarray:
    """A copy of a record array."""
    return raw(a).copy().view(a.dtype)


def assign(dst: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> None:
    """``dst[idx] = rows`` for record arrays."""
    raw(dst)[idx] = raw(rows)


def concat(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """Record arrays of ``dtype`` end to end (empty if there are none)."""
    if not parts:
        return np.empty(0, dtype)
    return np.concatenate([raw(p) for p in parts]).view(dtype)


def insert(a: np.ndarray, at: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``np.insert`` for record arrays."""
    return np.insert(raw(a), at, raw(rows)).view(a.dtype)


def delete(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``np.delete`` for record arrays."""
    return np.delete(raw(a), idx).view(a.dtype)


def readonly(a: np.ndarray) -> np.ndarray:
    """``a``, marked read-only."""
    a.flags.writeable = False
    return a


def is_sorted(keys: np.ndarray) -> bool:
    """Whether ``keys`` are in non-decreasing order."""
    return bool(np.all(keys[1:] >= keys[:-1]))


def is_canonical(sources: np.ndarray) -> bool:
    """Whether DIASources are in `canonical` order already (one pass, no sort)."""
    oid, mjd, sid = sources["diaObjectId"], sources["midpointMjdTai"], sources["diaSourceId"]
    same_oid, same_mjd = oid[1:] == oid[:-1], mjd[1:] == mjd[:-1]
    ahead = (oid[1:] > oid[:-1]) | same_oid & (
        (mjd[1:] > mjd[:-1]) | same_mjd & (sid[1:] >= sid[:-1])
    )
    return bool(np.all(ahead))


def canonical(sources: np.ndarray) -> np.ndarray:
    """Order of DIASources by (diaObjectId, midpointMjdTai, diaSourceId)."""
    return np.lexsort((sources["diaSourceId"], sources["midpointMjdTai"], sources["diaObjectId"]))


def trim(recent: np.ndarray, keep: int) -> np.ndarray:
    """Keep the last ``keep`` rows of each diaObjectId of canonically sorted rows."""
    ids = recent["diaObjectId"]
    if len(ids) <= keep:
        return recent
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    group_end = np.repeat(ends, ends - starts)
    return take(recent, group_end - np.arange(len(ids)) <= keep)


def ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(lo[i], hi[i])`` over i."""
    lens = hi - lo
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, I8)
    shift = lo - np.concatenate(([0], np.cumsum(lens)[:-1]))
    return np.repeat(shift, lens) + np.arange(total)


def groups(keys: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(key, positions)`` per distinct key, keys ascending, positions in input order."""
    if len(keys) == 0:
        return
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    cuts = np.flatnonzero(np.r_[True, k[1:] != k[:-1], True])
    for a, b in pairwise(cuts.tolist()):
        yield int(k[a]), order[a:b]
