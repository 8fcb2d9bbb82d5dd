"""Compiled loops over SQLite's C API, for `association.storage.sqlite.native`.

The C functions are numba external functions, resolved by symbol name when a
loop is compiled or loaded from numba's cache: only call these once
`association.storage.sqlite.native` has made the process's libsqlite3 visible
to LLVM (`association.storage.sqlite.native.library`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types

SQLITE_OK = 0
SQLITE_ROW = 100
SQLITE_DONE = 101
SQLITE_NULL = 5

_i32, _i64, _f64, _ptr = types.int32, types.int64, types.float64, types.intp
_ext = types.ExternalFunction
sqlite3_step = _ext("sqlite3_step", _i32(_ptr))
sqlite3_reset = _ext("sqlite3_reset", _i32(_ptr))
sqlite3_column_type = _ext("sqlite3_column_type", _i32(_ptr, _i32))
sqlite3_column_int64 = _ext("sqlite3_column_int64", _i64(_ptr, _i32))
sqlite3_column_double = _ext("sqlite3_column_double", _f64(_ptr, _i32))
sqlite3_bind_int64 = _ext("sqlite3_bind_int64", _i32(_ptr, _i32, _i64))
sqlite3_bind_double = _ext("sqlite3_bind_double", _i32(_ptr, _i32, _f64))
sqlite3_bind_null = _ext("sqlite3_bind_null", _i32(_ptr, _i32))
sqlite3_bind_text = _ext("sqlite3_bind_text", _i32(_ptr, _i32, _ptr, _i32, _ptr))

_jit = njit(cache=True, nogil=True)


@_jit
def reverse_rows(out, first, stop):
    """Reverse columns ``first..stop-1`` of every row of ``out`` in place."""
    for r in range(out.shape[0]):
        i, j = first, stop - 1
        while i < j:
            out[r, i], out[r, j] = out[r, j], out[r, i]
            i += 1
            j -= 1


@_jit
def fetch_rows(stmt, keys, counts, bind, reverse, k, resume, code, slot, i8, i4, i2, i1, f8, f4, n):
    """Step ``stmt`` once per key, filling rows ``n``.. of the outputs.

    With ``bind``, key ``keys[k]`` is bound to parameter 1 before each run;
    otherwise ``keys`` only counts the runs (one). ``counts[k]`` counts the
    rows of run ``k``; with ``reverse`` each run's rows are turned round once
    it ends. ``resume`` goes on with a run cut short. Column ``c`` goes to
    row ``slot[c]`` of the output of its kind ``code[c]`` (an index into
    `association.storage.interface.COLUMN_KINDS`); NULL floats become NaN.
    Returns (rows, key index, rc): rc is DONE at the end, ROW when the
    outputs are full (call again with ``resume``), else an error.
    """
    cap = i8.shape[1]
    while k < keys.shape[0]:
        if not resume and bind:
            sqlite3_reset(stmt)
            rc = sqlite3_bind_int64(stmt, 1, keys[k])
            if rc != SQLITE_OK:
                return n, k, rc
        resume = False
        while True:
            if n == cap:
                return n, k, SQLITE_ROW
            rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE:
                if reverse:
                    first = n - counts[k]
                    reverse_rows(i8, first, n)
                    reverse_rows(i4, first, n)
                    reverse_rows(i2, first, n)
                    reverse_rows(i1, first, n)
                    reverse_rows(f8, first, n)
                    reverse_rows(f4, first, n)
                break
            if rc != SQLITE_ROW:
                return n, k, rc
            for c in range(code.shape[0]):
                kind, s = code[c], slot[c]
                if kind == 0:
                    i8[s, n] = sqlite3_column_int64(stmt, c)
                elif kind == 1:
                    i4[s, n] = sqlite3_column_int64(stmt, c)
                elif kind == 2:
                    i2[s, n] = sqlite3_column_int64(stmt, c)
                elif kind == 3:
                    i1[s, n] = sqlite3_column_int64(stmt, c)
                else:
                    # NULL reads as 0.0: only then is the type worth asking.
                    v = sqlite3_column_double(stmt, c)
                    if v == 0.0 and sqlite3_column_type(stmt, c) == SQLITE_NULL:
                        v = np.nan
                    if kind == 4:
                        f8[s, n] = v
                    else:
                        f4[s, n] = v
            counts[k] += 1
            n += 1
        k += 1
    return n, k, SQLITE_DONE


@_jit
def insert_rows(stmt, per, code, slot, ints, floats, text, text_off, text_len, start):
    """Bind ``per`` rows to each run of ``stmt``, from row ``start``; return (next row, rc).

    Stops before a tail of fewer than ``per`` rows. Parameter
    ``r * len(code) + c + 1`` takes column ``c`` of row ``r`` of the run: row
    ``slot[c]`` of ``ints`` (``code[c] == 0``), of ``floats`` (1; NaN as
    NULL) or, for text (2), string ``ints[slot[c]]`` of the buffer at address
    ``text`` (offsets ``text_off``, lengths ``text_len``).
    """
    ncol = code.shape[0]
    total = ints.shape[1]
    n = start
    while n + per <= total:
        for r in range(per):
            for c in range(ncol):
                p, s = r * ncol + c + 1, slot[c]
                if code[c] == 0:
                    rc = sqlite3_bind_int64(stmt, p, ints[s, n + r])
                elif code[c] == 1:
                    v = floats[s, n + r]
                    rc = sqlite3_bind_null(stmt, p) if v != v else sqlite3_bind_double(stmt, p, v)
                else:
                    t = ints[s, n + r]
                    rc = sqlite3_bind_text(stmt, p, text + text_off[t], text_len[t], 0)
                if rc != SQLITE_OK:
                    return n, rc
        rc = sqlite3_step(stmt)
        sqlite3_reset(stmt)
        if rc != SQLITE_DONE:
            return n, rc
        n += per
    return n, SQLITE_DONE
