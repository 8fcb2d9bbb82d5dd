"""A compiled schemaless Avro encoder of columnar tables, driven by the schema.

The records to encode are described as *tables*: named sets of equally long
numpy columns, one table per kind of record. The root table's rows become the
records; a field of the root record may be one row of another table
(`Nested`), a slice of another table's rows as an array (`NestedArray`), or an
always-empty array (`EMPTY_ARRAY`). Nested records must be flat: each field a
primitive (boolean, int, long, float, double, string) or a union of ``null``
and one primitive. A schema field with no column is written null when the
schema allows it; a required field with no column is an error.

`compile_plan` turns (schema, table layout) into a small op array once;
`encode` packs the columns into one ``uint64`` matrix per table and runs a
numba kernel over the plan, writing every record, each after a fixed prefix
(e.g. the Confluent wire header), into one buffer. The bytes are those of
``fastavro.schemaless_writer`` for the dicts `records` builds from the same
tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numba as nb
import numpy as np

_JIT = {"cache": True, "nogil": True}

# Op codes of a plan row [op, col, null_byte, value_byte, arg].
_BYTES = 0  # arg zero bytes (null branches); value_byte: one byte to repeat
_LONG = 1  # int and long: zig-zag varint
_FLOAT = 2
_DOUBLE = 3
_BOOL = 4
_STRING = 5  # column holds an index into the string table
_NESTED = 6  # column holds a row of table `arg`, -1 for null
_ARRAY = 7  # columns col, col+1 hold lo, hi rows of table `arg`
_EMPTY_ARRAY = 8

_PRIMITIVE_OPS = {"long": _LONG, "int": _LONG, "float": _FLOAT, "double": _DOUBLE}
_PRIMITIVE_OPS.update({"boolean": _BOOL, "string": _STRING})
_MAX_BYTES = {_LONG: 10, _FLOAT: 4, _DOUBLE: 8, _BOOL: 1}
_INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class Column:
    """Values of a primitive field, one per row.

    Parameters
    ----------
    values : ndarray
        Integers for int/long fields, floats for float/double, bools for boolean.
    null : bool ndarray, optional
        True where the value is null. A NaN in a float column is null too
        when the field is nullable, and written as NaN when it is not.
    """

    values: np.ndarray
    null: np.ndarray | None = None


@dataclass(frozen=True)
class Strings:
    """A string field: per row an index into `table`."""

    codes: np.ndarray
    table: tuple[str, ...]
    null: np.ndarray | None = None


@dataclass(frozen=True)
class Nested:
    """A record field (or null): per row, the row of `table` it is; -1 for null."""

    table: str
    index: np.ndarray


@dataclass(frozen=True)
class NestedArray:
    """An array-of-records field: per row, rows ``lo:hi`` of `table`, or null."""

    table: str
    lo: np.ndarray
    hi: np.ndarray
    null: np.ndarray | None = None


@dataclass(frozen=True)
class EmptyArray:
    """An array field that is always empty (not null)."""


EMPTY_ARRAY = EmptyArray()

Source = Column | Strings | Nested | NestedArray | EmptyArray


@dataclass(frozen=True)
class Table:
    """`n` rows of named field sources."""

    n: int
    fields: Mapping[str, Source] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """A compiled (schema, table layout): which column each op writes."""

    tables: tuple[str, ...]  # table names; the root first
    columns: tuple[tuple[tuple[str, str], ...], ...]  # per table: (field, kind) of each column
    ops: np.ndarray  # int64 (n_ops, 5)
    lo: np.ndarray  # per table, its ops are ops[lo:hi]
    hi: np.ndarray
    schemas: tuple[dict, ...]  # per table, the record schema it fills


def compile_plan(schema: dict, root: str, tables: Mapping[str, Table]) -> Plan:
    """Match each table to its record schema and each schema field to a column.

    Parameters
    ----------
    schema : dict
        The parsed record schema (``fastavro.schema.load_schema``).
    root : str
        The table whose rows are the records.
    tables : mapping of str to Table
        Every table reachable from the root, each used under one record schema.
    """
    named: dict[str, dict] = {}
    order = [root]
    record_of = {root: _register(schema, named)}
    columns: dict[str, list[tuple[str, str]]] = {}
    table_ops: dict[str, list[list[int]]] = {}
    i = 0
    while i < len(order):
        name = order[i]
        i += 1
        if name not in tables:
            raise ValueError(f"no table {name!r} for record {record_of[name]['name']}")
        rec = record_of[name]
        ops: list[list[int]] = []
        cols: list[tuple[str, str]] = []
        for f in rec["fields"]:
            where = f"{rec['name']}.{f['name']} (table {name!r})"
            null_byte, t = _nullable(f["type"], named, where)
            src = tables[name].fields.get(f["name"])
            if src is None:
                if null_byte < 0:
                    raise ValueError(f"{where} is required and has no column")
                ops.append([_BYTES, 0, 0, null_byte, 1])
                continue
            value_byte = 2 if null_byte == 0 else 0
            if isinstance(src, (Nested, NestedArray, EmptyArray)):
                if name != root:
                    raise ValueError(f"{where}: nested records only one level deep")
                if isinstance(src, EmptyArray):
                    if not (isinstance(t, dict) and t["type"] == "array"):
                        raise ValueError(f"{where}: an empty array for a non-array field")
                    ops.append([_EMPTY_ARRAY, 0, null_byte, value_byte, 0])
                    continue
                want = t["items"] if isinstance(src, NestedArray) else t
                if isinstance(src, NestedArray) and not (
                    isinstance(t, dict) and t["type"] == "array"
                ):
                    raise ValueError(f"{where}: rows of {src.table!r} for a non-array field")
                sub = _record(want, named, where)
                if src.table in record_of and record_of[src.table]["name"] != sub["name"]:
                    raise ValueError(f"table {src.table!r} used as two record types")
                if src.table not in record_of:
                    record_of[src.table] = sub
                    order.append(src.table)
                sub_id = order.index(src.table)
                if isinstance(src, Nested):
                    cols.append((f["name"], "index"))
                    ops.append([_NESTED, len(cols) - 1, null_byte, value_byte, sub_id])
                else:
                    cols += [(f["name"], "lo"), (f["name"], "hi")]
                    ops.append([_ARRAY, len(cols) - 2, null_byte, value_byte, sub_id])
                continue
            if not isinstance(t, str) or t not in _PRIMITIVE_OPS:
                raise ValueError(f"{where}: type {t!r} is not a primitive")
            if (t == "string") != isinstance(src, Strings):
                raise TypeError(
                    f"{where}: a {t} field needs a {'Strings' if t == 'string' else 'Column'}"
                )
            cols.append((f["name"], t))
            ops.append([_PRIMITIVE_OPS[t], len(cols) - 1, null_byte, value_byte, 0])
        columns[name] = cols
        table_ops[name] = _merge_bytes(ops)
    all_ops: list[list[int]] = []
    lo, hi = [], []
    for name in order:
        lo.append(len(all_ops))
        all_ops += table_ops[name]
        hi.append(len(all_ops))
    return Plan(
        tables=tuple(order),
        columns=tuple(tuple(columns[n]) for n in order),
        ops=np.array(all_ops, np.int64).reshape(-1, 5),
        lo=np.array(lo, np.int64),
        hi=np.array(hi, np.int64),
        schemas=tuple(record_of[n] for n in order),
    )


def encode(
    plan: Plan, tables: Mapping[str, Table], prefix: bytes = b""
) -> tuple[bytes, np.ndarray]:
    """Every root row as a schemaless Avro record, each after `prefix`.

    Returns
    -------
    bytes, int64 ndarray
        The records concatenated, and the end offset of each; record ``i``
        (with its prefix) is ``buf[ends[i-1]:ends[i]]``.
    """
    vals, nulls, base, ncol, nrows = [], [], [], [], []
    sizes = {name: tables[name].n for name in plan.tables}
    strings: list[str] = []
    offset = 0
    for name, cols in zip(plan.tables, plan.columns, strict=True):
        t = tables[name]
        v, z = _pack(name, t, cols, strings, sizes)
        vals.append(v.ravel())
        nulls.append(z.ravel())
        base.append(offset)
        offset += v.size
        ncol.append(len(cols))
        nrows.append(t.n)
    size = _max_size(plan, tables, len(prefix))
    str_bytes, str_off = _string_table(strings)
    out = np.empty(size, np.uint8)
    n = tables[plan.tables[0]].n
    ends = np.empty(n, np.int64)
    end = _encode_rows(
        np.concatenate(vals) if vals else np.empty(0, np.uint64),
        np.concatenate(nulls) if nulls else np.empty(0, np.uint8),
        np.array(base, np.int64),
        np.array(ncol, np.int64),
        np.array(nrows, np.int64),
        plan.ops,
        plan.lo,
        plan.hi,
        str_bytes,
        str_off,
        np.frombuffer(prefix, np.uint8),
        out,
        ends,
    )
    return out[:end].tobytes(), ends


def records(plan: Plan, tables: Mapping[str, Table]) -> list[dict]:
    """The same records as dicts, for ``fastavro.schemaless_writer``."""

    def row_dict(t: int, r: int) -> dict:
        name = plan.tables[t]
        src_of = tables[name].fields
        out: dict = {}
        for f in plan.schemas[t]["fields"]:
            src = src_of.get(f["name"])
            if src is None:
                out[f["name"]] = None
            elif isinstance(src, EmptyArray):
                out[f["name"]] = []
            elif isinstance(src, Nested):
                k = int(src.index[r])
                out[f["name"]] = None if k < 0 else row_dict(plan.tables.index(src.table), k)
            elif isinstance(src, NestedArray):
                sub = plan.tables.index(src.table)
                if src.null is not None and src.null[r]:
                    out[f["name"]] = None
                else:
                    rows = range(int(src.lo[r]), int(src.hi[r]))
                    out[f["name"]] = [row_dict(sub, k) for k in rows]
            else:
                out[f["name"]] = _python_value(src, r, _nullable(f["type"], {}, "")[0] >= 0)
        return out

    return [row_dict(0, r) for r in range(tables[plan.tables[0]].n)]


def _python_value(src: Column | Strings, r: int, nullable: bool):
    if src.null is not None and src.null[r]:
        return None
    if isinstance(src, Strings):
        return src.table[int(src.codes[r])]
    v = src.values[r]
    if src.values.dtype.kind == "f":
        v = float(v)
        return None if nullable and math.isnan(v) else v
    if src.values.dtype.kind == "b":
        return bool(v)
    return int(v)


def _register(t, named: dict[str, dict]) -> dict:
    """Walk a parsed schema, remembering every named record by full name."""
    if isinstance(t, dict):
        if t.get("type") == "record":
            named.setdefault(t["name"], t)
            for f in t["fields"]:
                _register(f["type"], named)
        elif t.get("type") == "array":
            _register(t["items"], named)
    elif isinstance(t, list):
        for x in t:
            _register(x, named)
    return t


def _resolve(t, named: dict[str, dict]):
    if isinstance(t, str) and t in named:
        return named[t]
    if isinstance(t, dict) and t.get("type") in _PRIMITIVE_OPS and len(t) == 1:
        return t["type"]
    return t


def _nullable(t, named: dict[str, dict], where: str) -> tuple[int, object]:
    """(byte of the null branch, or -1 if not a union with null; the other type)."""
    if not isinstance(t, list):
        return -1, _resolve(t, named)
    if len(t) != 2 or "null" not in t:
        raise ValueError(f"{where}: union {t!r} is not [null, T]")
    k = t.index("null")
    return 2 * k, _resolve(t[1 - k], named)


def _record(t, named: dict[str, dict], where: str) -> dict:
    t = _resolve(t, named)
    if not (isinstance(t, dict) and t.get("type") == "record"):
        raise ValueError(f"{where}: {t!r} is not a record")
    return t


def _merge_bytes(ops: list[list[int]]) -> list[list[int]]:
    """Runs of single constant bytes (null branches) become one op."""
    out: list[list[int]] = []
    for op in ops:
        if op[0] == _BYTES and out and out[-1][0] == _BYTES and out[-1][3] == op[3]:
            out[-1][4] += op[4]
        else:
            out.append(list(op))
    return out


def _fixed_max(plan: Plan, t: int, fields: Mapping[str, Source]) -> int:
    """Largest encoding of a row of table `t` without its nested rows."""
    cols = plan.columns[t]
    total = 0
    for op, col, _, _, arg in plan.ops[plan.lo[t] : plan.hi[t]].tolist():
        if op == _BYTES:
            total += arg
        elif op == _STRING:
            src = fields[cols[col][0]]
            longest = max((len(s.encode()) for s in src.table), default=0)
            total += 1 + 10 + longest
        elif op in _MAX_BYTES:
            total += 1 + _MAX_BYTES[op]
        elif op == _NESTED:
            total += 1
        elif op == _ARRAY:
            total += 1 + 10 + 1
        elif op == _EMPTY_ARRAY:
            total += 2
    return total


def _max_size(plan: Plan, tables: Mapping[str, Table], prefix: int) -> int:
    """Bytes enough for every root record with its nested rows."""
    fixed = [_fixed_max(plan, t, tables[name].fields) for t, name in enumerate(plan.tables)]
    root = tables[plan.tables[0]]
    n = root.n
    total = n * (prefix + fixed[0])
    for op, col, _, _, arg in plan.ops[plan.lo[0] : plan.hi[0]].tolist():
        sub = fixed[arg]
        src = root.fields[plan.columns[0][col][0]]
        if op == _NESTED:
            total += n * sub
        elif op == _ARRAY:
            lo, hi = _slices(src, n, tables[src.table].n, plan.tables[0])
            total += int((hi - lo).sum()) * sub
    return total


def _pack(
    name: str, t: Table, cols, strings: list[str], sizes: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A table's columns as a row-major uint64 matrix of bits, and its null flags."""
    vals = np.zeros((t.n, len(cols)), np.uint64)
    nulls = np.zeros((t.n, len(cols)), np.uint8)
    for j, (fname, kind) in enumerate(cols):
        src = t.fields[fname]
        where = f"{name}.{fname}"
        if kind == "index":
            idx = _ints(src.index, t.n, where)
            rows = sizes[src.table]
            if t.n and (idx.min() < -1 or idx.max() >= rows):
                raise ValueError(f"{where}: row index out of range of table {src.table!r}")
            vals[:, j] = idx.view(np.uint64)
            continue
        if kind == "lo":
            lo, hi = _slices(src, t.n, sizes[src.table], where)
            vals[:, j], vals[:, j + 1] = lo.view(np.uint64), hi.view(np.uint64)
            if src.null is not None:
                nulls[:, j] = _mask(src.null, t.n, where)
            continue
        if kind == "hi":
            continue
        null = None if src.null is None else _mask(src.null, t.n, where)
        if kind == "string":
            codes = _ints(src.codes, t.n, where)
            if t.n and (codes.min() < 0 or codes.max() >= len(src.table)):
                bad = np.flatnonzero((codes < 0) | (codes >= len(src.table)))[0]
                raise ValueError(f"{where}: row {bad}: string code {codes[bad]} out of range")
            vals[:, j] = (codes + len(strings)).view(np.uint64)
            strings.extend(src.table)
        else:
            vals[:, j] = _bits(src.values, kind, t.n, where, null)
            if kind in ("float", "double"):
                nan = np.isnan(src.values)
                null = nan if null is None else (null | nan)
        if null is not None:
            nulls[:, j] = null
    return vals, nulls


def _slices(src: NestedArray, n: int, rows: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Checked lo, hi of an array field; a null row's slice becomes empty."""
    lo, hi = _ints(src.lo, n, where), _ints(src.hi, n, where)
    if src.null is not None:
        null = _mask(src.null, n, where)
        lo, hi = np.where(null, 0, lo), np.where(null, 0, hi)
    if n and (lo.min() < 0 or hi.max() > rows or np.any(hi < lo)):
        raise ValueError(f"{where}: slices are not within table {src.table!r} of {rows} rows")
    return lo, hi


def _ints(values, n: int, where: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{where}: {arr.shape} values for {n} rows")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{where}: integer column needed, got {arr.dtype}")
    return np.ascontiguousarray(arr, np.int64)


def _mask(values, n: int, where: str) -> np.ndarray:
    arr = np.asarray(values, bool)
    if arr.shape != (n,):
        raise ValueError(f"{where}: null mask of shape {arr.shape} for {n} rows")
    return arr


def _bits(values, kind: str, n: int, where: str, null: np.ndarray | None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{where}: {arr.shape} values for {n} rows")
    if kind in ("long", "int"):
        if arr.dtype.kind not in "iub":
            raise TypeError(f"{where}: a {kind} field needs integers, got {arr.dtype}")
        out = np.ascontiguousarray(arr, np.int64)
        if kind == "int" and n:
            live = out if null is None else out[~null]
            if live.size and (live.min() < _INT32[0] or live.max() > _INT32[1]):
                bad = np.flatnonzero((out < _INT32[0]) | (out > _INT32[1]))[0]
                raise ValueError(f"{where}: row {bad}: {out[bad]} does not fit an Avro int")
        return out.view(np.uint64)
    if kind == "boolean":
        if arr.dtype.kind not in "biu":
            raise TypeError(f"{where}: a boolean field needs bools, got {arr.dtype}")
        return (arr != 0).astype(np.uint64)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{where}: a {kind} field needs numbers, got {arr.dtype}")
    if kind == "float":
        return np.ascontiguousarray(arr, np.float32).view(np.uint32).astype(np.uint64)
    return np.ascontiguousarray(arr, np.float64).view(np.uint64)


def _string_table(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    raw = [s.encode() for s in strings]
    off = np.zeros(len(raw) + 1, np.int64)
    off[1:] = np.cumsum([len(b) for b in raw]) if raw else []
    return np.frombuffer(b"".join(raw), np.uint8).copy(), off


_U7 = np.uint64(7)
_U7F = np.uint64(0x7F)
_U80 = np.uint64(0x80)
_UFF = np.uint64(0xFF)


@nb.njit(**_JIT, inline="always")
def _put_long(out, p, value):
    v = np.int64(value)
    z = np.uint64((v << 1) ^ (v >> 63))
    while z >= _U80:
        out[p] = np.uint8((z & _U7F) | _U80)
        p += 1
        z >>= _U7
    out[p] = np.uint8(z)
    return p + 1


@nb.njit(**_JIT, inline="always")
def _put_bytes(out, p, bits, count):
    for k in range(count):
        out[p + k] = np.uint8((bits >> np.uint64(8 * k)) & _UFF)
    return p + count


@nb.njit(**_JIT, inline="always")
def _quiet_float(bits):
    # fastavro writes a float through a C float, which quiets a signalling NaN.
    b = np.int64(bits)
    if (b & 0x7F800000) == 0x7F800000 and (b & 0x007FFFFF) != 0:
        b |= 0x00400000
    return np.uint64(b)


@nb.njit(**_JIT, inline="always")
def _put_scalar(out, p, op, bits, str_bytes, str_off):
    if op == _LONG:
        return _put_long(out, p, np.int64(bits))
    if op == _FLOAT:
        return _put_bytes(out, p, _quiet_float(bits), 4)
    if op == _DOUBLE:
        return _put_bytes(out, p, bits, 8)
    if op == _BOOL:
        out[p] = np.uint8(bits)
        return p + 1
    # _STRING
    s = np.int64(bits)
    a, b = str_off[s], str_off[s + 1]
    p = _put_long(out, p, b - a)
    for k in range(a, b):
        out[p] = str_bytes[k]
        p += 1
    return p


@nb.njit(**_JIT)
def _put_flat(out, p, t, r, vals, nulls, base, ncol, ops, lo, hi, str_bytes, str_off):
    # A nested row: compile_plan allows only scalar fields here.
    row = base[t] + r * ncol[t]
    for i in range(lo[t], hi[t]):
        op, col, null_byte, value_byte, arg = ops[i, 0], ops[i, 1], ops[i, 2], ops[i, 3], ops[i, 4]
        if op == _BYTES:
            out[p : p + arg] = value_byte
            p += arg
            continue
        if null_byte >= 0:
            if nulls[row + col] != 0:
                out[p] = null_byte
                p += 1
                continue
            out[p] = value_byte
            p += 1
        p = _put_scalar(out, p, op, vals[row + col], str_bytes, str_off)
    return p


@nb.njit(**_JIT)
def _put_row(out, p, t, r, vals, nulls, base, ncol, ops, lo, hi, str_bytes, str_off):
    row = base[t] + r * ncol[t]
    for i in range(lo[t], hi[t]):
        op, col, null_byte, value_byte, arg = ops[i, 0], ops[i, 1], ops[i, 2], ops[i, 3], ops[i, 4]
        if op == _BYTES:
            out[p : p + arg] = value_byte
            p += arg
            continue
        if op == _EMPTY_ARRAY:
            if null_byte >= 0:
                out[p] = value_byte
                p += 1
            out[p] = 0
            p += 1
            continue
        bits = vals[row + col]
        if op == _NESTED:
            k = np.int64(bits)
            if k < 0:
                out[p] = null_byte
                p += 1
                continue
            if null_byte >= 0:
                out[p] = value_byte
                p += 1
            p = _put_flat(out, p, arg, k, vals, nulls, base, ncol, ops, lo, hi, str_bytes, str_off)
            continue
        if op == _ARRAY:
            if nulls[row + col] != 0:
                out[p] = null_byte
                p += 1
                continue
            if null_byte >= 0:
                out[p] = value_byte
                p += 1
            a, b = np.int64(bits), np.int64(vals[row + col + 1])
            if b > a:
                p = _put_long(out, p, b - a)
                for k in range(a, b):
                    p = _put_flat(
                        out, p, arg, k, vals, nulls, base, ncol, ops, lo, hi, str_bytes, str_off
                    )
            out[p] = 0
            p += 1
            continue
        if null_byte >= 0:
            if nulls[row + col] != 0:
                out[p] = null_byte
                p += 1
                continue
            out[p] = value_byte
            p += 1
        p = _put_scalar(out, p, op, bits, str_bytes, str_off)
    return p


@nb.njit(**_JIT)
def _encode_rows(
    vals, nulls, base, ncol, nrows, ops, lo, hi, str_bytes, str_off, prefix, out, ends
):
    p = 0
    for r in range(nrows[0]):
        for k in range(len(prefix)):
            out[p + k] = prefix[k]
        p += len(prefix)
        p = _put_row(out, p, 0, r, vals, nulls, base, ncol, ops, lo, hi, str_bytes, str_off)
        ends[r] = p
    return p
