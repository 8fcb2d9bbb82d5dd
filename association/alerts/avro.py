"""Compiled Avro encoder of the alert schema ``schemas/alert.avsc``.

Writes the same records as one dict per alert (the tests' reference,
``tests/oracles/alerts.py``) given to ``fastavro.writer``, but straight from
columnar numpy arrays: a numba kernel encodes every record into one
preallocated byte buffer (sized by the largest encoding a record can have),
then the buffer is cut into blocks of an Avro Object Container File.

The kernel is written for this one schema; `schema_json` refuses to run if
the ``.avsc`` no longer has the field layout the kernel encodes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fastavro
import numba as nb
import numpy as np

from association.columns import BANDS, DIASOURCE_DTYPE, OBJECT_DTYPE

try:
    import zlib
except ImportError:  # pragma: no cover - zlib is part of nearly every Python
    zlib = None

SCHEMA_PATH = Path(__file__).parent / "schemas" / "alert.avsc"
MAGIC = b"Obj\x01"
SYNC_SIZE = 16

_JIT = {"cache": True, "nogil": True}

_NULLABLE_DOUBLE = ("null", "double")
_SOURCE_LAYOUT = (
    "nightpipe.alert.DiaSource",
    (
        ("diaSourceId", "long"),
        ("visit", "long"),
        ("diaObjectId", ("null", "long")),
        ("ra", "double"),
        ("dec", "double"),
        ("raErr", ("null", "float")),
        ("decErr", ("null", "float")),
        ("midpointMjdTai", "double"),
        ("band", "string"),
        ("psfFlux", "float"),
        ("psfFluxErr", "float"),
        ("snr", ("null", "float")),
    ),
)
_OBJECT_LAYOUT = (
    "nightpipe.alert.DiaObject",
    (
        ("diaObjectId", "long"),
        ("ra", "double"),
        ("dec", "double"),
        ("nDiaSources", "int"),
        ("firstMjd", "double"),
        ("lastMjd", "double"),
        ("isVariable", "boolean"),
        *((f"{b}_psfFlux{s}", _NULLABLE_DOUBLE) for b in BANDS for s in ("Mean", "Sigma")),
    ),
)
_ALERT_LAYOUT = (
    "nightpipe.alert.Alert",
    (
        ("alertId", "long"),
        ("diaSource", _SOURCE_LAYOUT),
        ("diaObject", ("null", _OBJECT_LAYOUT)),
        ("prvDiaSources", ("array", "nightpipe.alert.DiaSource")),
    ),
)
"""The field layout the kernel encodes, as `_layout` reads it off the parsed schema."""

# Largest encodings, in bytes: a long takes up to 10 (varint), an int 5, a
# double 8, a float 4, a union branch index 1, a one-letter string 2.
_SOURCE_MAX = 10 + 10 + (1 + 10) + 8 + 8 + (1 + 4) + (1 + 4) + 8 + 2 + 4 + 4 + (1 + 4)
_OBJECT_MAX = 1 + 10 + 8 + 8 + 5 + 8 + 8 + 1 + 2 * len(BANDS) * (1 + 8)
_ALERT_MAX = 10 + _SOURCE_MAX + _OBJECT_MAX + 10 + 1
_BAND_CODES = np.frombuffer(BANDS.encode("ascii"), np.uint8)


def alert_schema() -> dict:
    """The parsed Avro schema ``nightpipe.alert.Alert``, read from `SCHEMA_PATH` now."""
    return fastavro.schema.load_schema(str(SCHEMA_PATH))


@functools.cache
def schema_json() -> str:
    """The ``avro.schema`` header value, as fastavro writes it for the parsed schema.

    fastavro puts ``json.dumps`` of the parsed schema (full names, its own
    key order) without its private ``__fastavro_parsed``/``__named_schemas`` keys.
    """
    parsed = alert_schema()
    if _layout(parsed) != _ALERT_LAYOUT:
        raise RuntimeError(f"{SCHEMA_PATH} changed: update the encoder in {__name__}")
    return container_schema_json(parsed)


def container_schema_json(parsed: dict) -> str:
    """The ``avro.schema`` header value fastavro writes for a parsed schema."""
    return json.dumps({k: v for k, v in parsed.items() if not k.startswith("__")})


def encode_alerts(
    sources: np.ndarray,
    objects: np.ndarray,
    obj_index: np.ndarray,
    prv: np.ndarray,
    prv_lo: np.ndarray,
    prv_hi: np.ndarray,
) -> bytes:
    """Avro binary encoding of the alerts, records concatenated.

    Parameters
    ----------
    sources : DIASOURCE_DTYPE array
        The alerting DIASources; alert ``i`` has ``alertId = sources[i].diaSourceId``.
    objects : OBJECT_DTYPE array
        Objects referenced by ``obj_index``.
    obj_index : int array
        Row in ``objects`` of each source's Object; -1 for a null ``diaObject``.
    prv : DIASOURCE_DTYPE array
        Previous DIASources; those of alert ``i`` are ``prv[prv_lo[i]:prv_hi[i]]``.
    prv_lo, prv_hi : int arrays
        Slice bounds into ``prv``, one pair per alert.
    """
    buf, _ = _encode(sources, objects, obj_index, prv, prv_lo, prv_hi)
    return buf.tobytes()


def write_alert_file(
    path: str | Path,
    sources: np.ndarray,
    objects: np.ndarray,
    obj_index: np.ndarray,
    prv: np.ndarray,
    prv_lo: np.ndarray,
    prv_hi: np.ndarray,
    sync_marker: bytes | None = None,
    codec: str = "deflate",
    block_records: int = 1000,
    *,
    sync_interval: int | None = None,
    compression_level: int = -1,
    workers: int = 1,
) -> int:
    """Write the alerts as one Avro container file; return how many.

    Arguments as in `encode_alerts`. The file appears complete or not at all
    (written aside, then renamed); zero alerts give a file of the header only.

    Parameters
    ----------
    sync_marker : bytes, optional
        The 16-byte sync marker; by default the BLAKE2b-128 digest of the
        file's name, so writing the same visit again gives the same bytes.
    codec : {"deflate", "null"}
        Block compression: raw DEFLATE (RFC 1951), or none.
    block_records : int
        Records per block.
    sync_interval : int, optional
        Instead of ``block_records``, end a block as soon as its encoded
        records reach this many bytes, as ``fastavro.writer`` does.
    compression_level : int
        zlib level for ``deflate``; -1 is zlib's default (6), as fastavro uses.
    workers : int
        Threads compressing blocks; the bytes do not depend on it.
    """
    buf, ends = _encode(sources, objects, obj_index, prv, prv_lo, prv_hi)
    return write_container(
        path,
        buf,
        ends,
        schema_json(),
        sync_marker,
        codec,
        block_records,
        sync_interval=sync_interval,
        compression_level=compression_level,
        workers=workers,
    )


def write_container(
    path: str | Path,
    records: np.ndarray | bytes,
    ends: np.ndarray,
    schema_text: str,
    sync_marker: bytes | None = None,
    codec: str = "deflate",
    block_records: int = 1000,
    *,
    sync_interval: int | None = None,
    compression_level: int = -1,
    workers: int = 1,
) -> int:
    """Write encoded records as one Avro container file; return how many.

    Parameters
    ----------
    records : uint8 array or bytes
        The schemaless Avro records, concatenated.
    ends : int array
        End offset of each record in `records`.
    schema_text : str
        The ``avro.schema`` header value (the schema as JSON).

    Other parameters as in `write_alert_file`.
    """
    path = Path(path)
    if sync_marker is None:
        sync_marker = hashlib.blake2b(path.name.encode(), digest_size=SYNC_SIZE).digest()
    if len(sync_marker) != SYNC_SIZE:
        raise ValueError(f"sync_marker must be {SYNC_SIZE} bytes, not {len(sync_marker)}")
    if codec == "deflate" and zlib is None:  # pragma: no cover
        raise ValueError("the deflate codec needs zlib")
    if codec not in ("deflate", "null"):
        raise ValueError(f"unsupported codec {codec!r}; use 'deflate' or 'null'")
    if block_records < 1 or (sync_interval is not None and sync_interval < 1):
        raise ValueError("block_records and sync_interval must be >= 1")

    ends = np.asarray(ends, np.int64)
    if sync_interval is not None:
        cuts = _fastavro_cuts(ends, sync_interval)
    else:
        cuts = np.append(np.arange(block_records, len(ends), block_records), len(ends))
        cuts = cuts[cuts > 0]
    starts = np.concatenate((np.zeros(1, np.int64), cuts))[: len(cuts)]
    counts = (cuts - starts).tolist()
    bounds = np.concatenate(([0], ends))
    data = memoryview(records)
    blocks = [
        data[bounds[a] : bounds[b]] for a, b in zip(starts.tolist(), cuts.tolist(), strict=True)
    ]
    if codec == "deflate":

        def deflate(block: memoryview) -> bytes:
            packer = zlib.compressobj(compression_level, zlib.DEFLATED, -15)
            return packer.compress(block) + packer.flush()

        if workers > 1 and len(blocks) > 1:
            with ThreadPoolExecutor(workers) as pool:
                blocks = list(pool.map(deflate, blocks))
        else:
            blocks = [deflate(block) for block in blocks]

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as out:
            out.write(_header(codec, sync_marker, schema_text))
            for count, block in zip(counts, blocks, strict=True):
                out.write(_long_bytes(count) + _long_bytes(len(block)))
                out.write(block)
                out.write(sync_marker)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(ends)


def warm_up() -> None:
    """Compile (or load from numba's cache, ~0.3 s) the encoder now, not in the first visit."""
    schema_json()
    one = np.zeros(1, np.int64)
    rows = np.zeros(1, DIASOURCE_DTYPE)
    _encode(rows, np.zeros(1, OBJECT_DTYPE), one, rows, one, one + 1)
    _fastavro_cuts(one, 1)


def _layout(t):
    # The parsed schema reduced to names and types (no docs, no defaults).
    if isinstance(t, list):
        return tuple(_layout(x) for x in t)
    if isinstance(t, dict):
        if t["type"] == "record":
            return (t["name"], tuple((f["name"], _layout(f["type"])) for f in t["fields"]))
        if t["type"] == "array":
            return ("array", _layout(t["items"]))
        return t["type"]
    return t


def _long_bytes(value: int) -> bytes:
    """Zig-zag varint of a long, as Avro encodes it."""
    z = (value << 1) ^ (value >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string_bytes(text: str) -> bytes:
    raw = text.encode()
    return _long_bytes(len(raw)) + raw


def _header(codec: str, sync_marker: bytes, schema_text: str) -> bytes:
    """Container header with fastavro's metadata: one map block, codec first."""
    meta = (("avro.codec", codec), ("avro.schema", schema_text))
    parts = [MAGIC, _long_bytes(len(meta))]
    for key, value in meta:
        parts += [_string_bytes(key), _string_bytes(value)]
    parts += [_long_bytes(0), sync_marker]
    return b"".join(parts)


def _source_columns(rows: np.ndarray) -> tuple:
    """Contiguous columns of DIASOURCE_DTYPE rows; floats as their IEEE bits."""
    band = np.asarray(rows["band"]).astype(np.int64)
    if band.size and (band.min() < -len(BANDS) or band.max() >= len(BANDS)):
        raise ValueError(f"band index out of range for {BANDS!r}")

    def bits(name: str, dtype: type, as_uint: type) -> np.ndarray:
        return np.ascontiguousarray(rows[name], dtype).view(as_uint)

    return (
        np.ascontiguousarray(rows["diaSourceId"], np.int64),
        np.ascontiguousarray(rows["visit"], np.int64),
        np.ascontiguousarray(rows["diaObjectId"], np.int64),
        bits("ra", np.float64, np.uint64),
        bits("dec", np.float64, np.uint64),
        bits("raErr", np.float32, np.uint32),
        bits("decErr", np.float32, np.uint32),
        bits("midpointMjdTai", np.float64, np.uint64),
        _BAND_CODES[band % len(BANDS)],  # Python indexing: -1 is the last band
        bits("psfFlux", np.float32, np.uint32),
        bits("psfFluxErr", np.float32, np.uint32),
        bits("snr", np.float32, np.uint32),
    )


def _object_columns(rows: np.ndarray) -> tuple:
    """Contiguous columns of OBJECT_DTYPE rows; float64s as their IEEE bits."""
    return (
        np.ascontiguousarray(rows["diaObjectId"], np.int64),
        np.ascontiguousarray(rows["ra"], np.float64).view(np.uint64),
        np.ascontiguousarray(rows["dec"], np.float64).view(np.uint64),
        np.ascontiguousarray(rows["nDiaSources"], np.int64),
        np.ascontiguousarray(rows["firstMjd"], np.float64).view(np.uint64),
        np.ascontiguousarray(rows["lastMjd"], np.float64).view(np.uint64),
        np.ascontiguousarray(rows["isVariable"], np.bool_).view(np.uint8),
        np.ascontiguousarray(rows["psfFluxNdata"], np.int64).reshape(len(rows), len(BANDS)),
        np.ascontiguousarray(rows["psfFluxMean"], np.float32).reshape(len(rows), len(BANDS)),
        np.ascontiguousarray(rows["psfFluxM2"], np.float32).reshape(len(rows), len(BANDS)),
    )


def _encode(
    sources: np.ndarray,
    objects: np.ndarray,
    obj_index: np.ndarray,
    prv: np.ndarray,
    prv_lo: np.ndarray,
    prv_hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Encoded records (uint8) and the end offset of each record in them."""
    n = len(sources)
    obj_index = np.ascontiguousarray(obj_index, np.int64)
    prv_lo = np.ascontiguousarray(prv_lo, np.int64)
    prv_hi = np.ascontiguousarray(prv_hi, np.int64)
    if not (obj_index.shape == prv_lo.shape == prv_hi.shape == (n,)):
        raise ValueError("obj_index, prv_lo and prv_hi need one entry per source")
    if n and (obj_index.min() < -1 or obj_index.max() >= len(objects)):
        raise ValueError("obj_index out of range of objects")
    if n and (prv_lo.min() < 0 or prv_hi.max() > len(prv) or np.any(prv_hi < prv_lo)):
        raise ValueError("prv_lo/prv_hi are not slices of prv")
    n_prv = int((prv_hi - prv_lo).sum())
    out = np.empty(n * _ALERT_MAX + n_prv * _SOURCE_MAX, np.uint8)
    ends = np.empty(n, np.int64)
    size = _encode_records(
        _source_columns(sources),
        _object_columns(objects),
        obj_index,
        _source_columns(prv),
        prv_lo,
        prv_hi,
        out,
        ends,
    )
    return out[:size], ends


@nb.njit(**_JIT)
def _fastavro_cuts(ends, sync_interval):
    # fastavro ends a block once its buffer holds >= sync_interval bytes.
    cuts = np.empty(len(ends), np.int64)
    n_cuts = 0
    first, start = 0, 0
    for i in range(len(ends)):
        if ends[i] - start >= sync_interval:
            cuts[n_cuts] = i + 1
            n_cuts += 1
            first, start = i + 1, ends[i]
    if first < len(ends):
        cuts[n_cuts] = len(ends)
        n_cuts += 1
    return cuts[:n_cuts]


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
def _put_u64(out, p, bits):
    for k in range(8):
        out[p + k] = np.uint8((bits >> np.uint64(8 * k)) & _UFF)
    return p + 8


@nb.njit(**_JIT, inline="always")
def _put_u32(out, p, bits):
    b = np.int64(bits)
    for k in range(4):
        out[p + k] = np.uint8((b >> (8 * k)) & 0xFF)
    return p + 4


@nb.njit(**_JIT, inline="always")
def _is_nan32(bits):
    b = np.int64(bits)
    return (b & 0x7F800000) == 0x7F800000 and (b & 0x007FFFFF) != 0


@nb.njit(**_JIT, inline="always")
def _put_float(out, p, bits):
    # Written via float(np.float32) -> C float, which quiets a signalling NaN.
    b = np.int64(bits)
    if _is_nan32(b):
        b |= 0x00400000
    return _put_u32(out, p, b)


@nb.njit(**_JIT, inline="always")
def _put_nullable_float(out, p, bits):
    if _is_nan32(bits):
        out[p] = 0
        return p + 1
    out[p] = 2
    return _put_u32(out, p + 1, bits)


@nb.njit(**_JIT, inline="always")
def _put_nullable_double(out, p, value, is_null):
    if is_null:
        out[p] = 0
        return p + 1
    out[p] = 2
    return _put_u64(out, p + 1, np.float64(value).view(np.uint64))


@nb.njit(**_JIT)
def _put_source(out, p, s, i):
    p = _put_long(out, p, s[0][i])
    p = _put_long(out, p, s[1][i])
    if s[2][i] == 0:
        out[p] = 0
        p += 1
    else:
        out[p] = 2
        p = _put_long(out, p + 1, s[2][i])
    p = _put_u64(out, p, s[3][i])
    p = _put_u64(out, p, s[4][i])
    p = _put_nullable_float(out, p, s[5][i])
    p = _put_nullable_float(out, p, s[6][i])
    p = _put_u64(out, p, s[7][i])
    out[p] = 2  # string of length 1
    out[p + 1] = s[8][i]
    p = _put_float(out, p + 2, s[9][i])
    p = _put_float(out, p, s[10][i])
    return _put_nullable_float(out, p, s[11][i])


@nb.njit(**_JIT)
def _put_object(out, p, o, k):
    p = _put_long(out, p, o[0][k])
    p = _put_u64(out, p, o[1][k])
    p = _put_u64(out, p, o[2][k])
    p = _put_long(out, p, o[3][k])
    p = _put_u64(out, p, o[4][k])
    p = _put_u64(out, p, o[5][k])
    out[p] = 1 if o[6][k] != 0 else 0
    p += 1
    for b in range(o[7].shape[1]):
        n = o[7][k, b]
        mean = np.float64(o[8][k, b])
        p = _put_nullable_double(out, p, mean, n <= 0 or np.isnan(mean))
        # Python's max(m2, 0.0): 0.0 only when 0.0 > m2, so NaN stays NaN.
        m2 = np.float64(o[9][k, b])
        if m2 < 0.0:
            m2 = 0.0
        sigma = np.sqrt(m2 / np.float64(n - 1)) if n > 1 else 0.0
        p = _put_nullable_double(out, p, sigma, n <= 1)
    return p


@nb.njit(**_JIT)
def _encode_records(src, obj, obj_index, prv, prv_lo, prv_hi, out, ends):
    p = 0
    for i in range(len(obj_index)):
        p = _put_long(out, p, src[0][i])  # alertId = diaSourceId
        p = _put_source(out, p, src, i)
        k = obj_index[i]
        if k < 0:
            out[p] = 0
            p += 1
        else:
            out[p] = 2
            p = _put_object(out, p + 1, obj, k)
        lo, hi = prv_lo[i], prv_hi[i]
        if hi > lo:
            p = _put_long(out, p, hi - lo)
            for j in range(lo, hi):
                p = _put_source(out, p, prv, j)
        out[p] = 0
        p += 1
        ends[i] = p
    return p
