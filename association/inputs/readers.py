"""Reading the tables other teams write: new DIASources, moving-object predictions.

A table is a FITS binary table (``.fits``, ``.fit``, ``.fits.gz``), Parquet
(``.parquet``, ``.pq``) or ECSV (``.ecsv``), chosen by the file's suffix.
Parquet is read with pyarrow directly, the others with astropy. Every problem
raises `BadInputError` naming the file, the column and the row; rows count
from 0 in file order.

Units: positions and their errors in degrees, as Rubin gives them (``raErr``,
``decErr``); fluxes in nJy; ellipse axes of predictions in arcsec (1 sigma),
position angle in degrees east of north.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from association.columns import BANDS, DIASOURCE_DTYPE, NBANDS, band_index

PREDICTION_DTYPE = np.dtype(
    [
        ("ssObjectId", "i8"),
        ("ra", "f8"),  # deg
        ("dec", "f8"),  # deg
        ("semiMajorAxis", "f4"),  # arcsec, 1 sigma
        ("semiMinorAxis", "f4"),  # arcsec, 1 sigma
        ("positionAngle", "f4"),  # deg east of north, of the major axis
        ("predictedMag", "f4"),  # NaN if unknown
        ("mjd", "f8"),  # time of the predicted position
    ]
)
"""A predicted position of a moving object, from NightMOPS."""

PARQUET_SUFFIXES = (".parquet", ".pq")
FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")
ECSV_SUFFIXES = (".ecsv",)


class BadInputError(ValueError):
    """An input file that cannot be used, with where the problem is.

    Parameters
    ----------
    problem : str
        What is wrong, e.g. ``value 95.2 out of range [-90, 90]``.
    path, column, row
        The file, the column and the row (from 0) at fault; each may be None.
    kind : str
        What the file is, for the message (``diasources``, ``predictions``).
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str | Path | None = None,
        column: str | None = None,
        row: int | None = None,
        kind: str = "input",
    ) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.column = column
        self.row = row
        self.kind = kind
        where = [f"{kind} file '{self.path}'" if path is not None else f"{kind} file"]
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}")
        super().__init__(f"{', '.join(where)}: {problem}")

    def __reduce__(self):
        # Keeps the parts across pickling (errors travel from Slices to the master).
        return (_bad_input, (self.problem, self.path, self.column, self.row, self.kind))


def _bad_input(problem, path, column, row, kind) -> BadInputError:
    cls = MissingInputError if problem == MissingInputError.PROBLEM else BadInputError
    return cls(problem, path=path, column=column, row=row, kind=kind)


class MissingInputError(BadInputError):
    """An input file that is not there at all."""

    PROBLEM = "no such file"


@dataclass(frozen=True)
class _Col:
    name: str
    kind: str  # "i" integer, "f" number, "s" string, "b" boolean
    required: bool = True


_DIASOURCE_COLUMNS = (
    _Col("diaSourceId", "i"),
    _Col("ra", "f"),
    _Col("dec", "f"),
    _Col("midpointMjdTai", "f"),
    _Col("band", "s"),
    _Col("psfFlux", "f"),
    _Col("psfFluxErr", "f"),
    _Col("raErr", "f", required=False),
    _Col("decErr", "f", required=False),
    _Col("snr", "f", required=False),
    _Col("fine", "i", required=False),
)

_PREDICTION_COLUMNS = tuple(
    _Col(name, "i" if name == "ssObjectId" else "f") for name in PREDICTION_DTYPE.names
)


def read_diasources(
    path: str | Path, visit: int, partition_fine: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """Read and check a visit's new DIASources.

    Parameters
    ----------
    path : str or Path
        The table: required columns diaSourceId (integer > 0), ra, dec (deg),
        midpointMjdTai, band (one of ``ugrizy``), psfFlux, psfFluxErr (nJy);
        optional raErr, decErr (deg) and snr, NaN when absent; optional fine,
        which must then be the index ``partition_fine`` gives.
    visit : int
        Fills the ``visit`` column.
    partition_fine : callable
        ``(ra, dec) -> int64 array``, the fine HEALPix index; fills ``fine``.

    Returns
    -------
    ndarray of DIASOURCE_DTYPE
        diaObjectId and ssObjectId are 0. An empty table gives zero rows.

    Raises
    ------
    BadInputError
        Missing or unreadable file, missing column, wrong type, NaN or out of
        range ra/dec/midpointMjdTai, non-finite psfFlux, negative or
        non-finite psfFluxErr, negative errors, unknown band, duplicate
        diaSourceId, a supplied fine that is not the one of (ra, dec).
    """
    cols = _read_checked(path, _DIASOURCE_COLUMNS, "diasources")
    err = _Reporter(path, "diasources")
    n = len(cols["diaSourceId"])
    err.positive("diaSourceId", cols["diaSourceId"])
    err.unique("diaSourceId", cols["diaSourceId"])
    err.sky(cols["ra"], cols["dec"])
    err.finite("midpointMjdTai", cols["midpointMjdTai"])
    err.finite("psfFlux", cols["psfFlux"])
    err.at_least("psfFluxErr", cols["psfFluxErr"], 0.0, allow_nan=False)
    for name in ("raErr", "decErr"):
        err.at_least(name, cols[name], 0.0, allow_nan=True)
    band = band_index(cols["band"])
    bad = np.flatnonzero(band < 0)
    if bad.size:
        err.fail(
            "band", bad[0], f"unknown band {str(cols['band'][bad[0]])!r}, expected one of {BANDS}"
        )

    out = np.zeros(n, dtype=DIASOURCE_DTYPE)
    for col in _DIASOURCE_COLUMNS:
        if col.name not in ("band", "fine"):
            out[col.name] = cols[col.name]
    out["band"] = band
    out["visit"] = visit
    if n:
        out["fine"] = derive_fine(err, partition_fine, out["ra"], out["dec"], cols.get("fine"))
    return out


def derive_fine(
    err: _Reporter,
    partition_fine: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ra: np.ndarray,
    dec: np.ndarray,
    supplied: np.ndarray | None,
) -> np.ndarray:
    """The fine index of each (ra, dec); a supplied one must be equal."""
    n = len(ra)
    fine = np.asarray(partition_fine(ra, dec), dtype=np.int64)
    if fine.shape != (n,):
        raise ValueError(f"partition_fine returned shape {fine.shape} for {n} positions")
    if supplied is not None:
        bad = np.flatnonzero(supplied != fine)
        if bad.size:
            i = bad[0]
            err.fail(
                "fine",
                i,
                f"value {supplied[i]} is not the fine HEALPix index of (ra, dec) = "
                f"({float(ra[i])!r}, {float(dec[i])!r}), which is {fine[i]}; "
                f"the column is optional: "
                f"leave it out and it is derived from ra and dec ({bad.size} rows differ)",
            )
    return fine


def read_predictions(path: str | Path) -> np.ndarray:
    """Read and check NightMOPS's predicted moving-object positions.

    All columns of `PREDICTION_DTYPE` are required; predictedMag may be NaN.

    Raises
    ------
    BadInputError
        As `read_diasources`, and for axes that are not ``0 < semiMinorAxis
        <= semiMajorAxis``, a non-finite positionAngle, a duplicate
        ssObjectId.
    """
    cols = _read_checked(path, _PREDICTION_COLUMNS, "predictions")
    err = _Reporter(path, "predictions")
    err.positive("ssObjectId", cols["ssObjectId"])
    err.unique("ssObjectId", cols["ssObjectId"])
    err.sky(cols["ra"], cols["dec"])
    err.finite("mjd", cols["mjd"])
    err.finite("positionAngle", cols["positionAngle"])
    major, minor = cols["semiMajorAxis"], cols["semiMinorAxis"]
    err.finite("semiMajorAxis", major)
    err.finite("semiMinorAxis", minor)
    bad = np.flatnonzero(~(minor > 0))
    if bad.size:
        err.fail("semiMinorAxis", bad[0], f"value {_num(minor[bad[0]])} is not > 0")
    bad = np.flatnonzero(~(minor <= major))
    if bad.size:
        i = bad[0]
        err.fail("semiMinorAxis", i, f"value {_num(minor[i])} > semiMajorAxis {_num(major[i])}")
    out = np.zeros(len(major), dtype=PREDICTION_DTYPE)
    for name in PREDICTION_DTYPE.names:
        out[name] = cols[name]
    return out


def write_table(path: str | Path, array: np.ndarray) -> None:
    """Write a structured array as Parquet, FITS or ECSV, by the suffix of ``path``.

    A ``band`` field of small ints is written as band names; a field of shape
    ``(6,)`` (per band) as one column per band, ``{b}_{name}``.
    """
    path = Path(path)
    cols = _flat_columns(array)
    fmt = _format(path)
    if fmt is None:
        raise ValueError(f"cannot write '{path}': unknown suffix, expected {_SUFFIX_HELP}")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({k: pa.array(v) for k, v in cols.items()}), path)
        return
    from astropy.table import Table

    table = Table(cols)
    if fmt == "fits":
        table.write(path, format="fits", overwrite=True)
    else:
        table.write(path, format="ascii.ecsv", overwrite=True)


# --- reading ---------------------------------------------------------------

_SUFFIX_HELP = ", ".join(PARQUET_SUFFIXES + FITS_SUFFIXES + ECSV_SUFFIXES)


def _format(path: Path) -> str | None:
    name = path.name.lower()
    for fmt, suffixes in (
        ("parquet", PARQUET_SUFFIXES),
        ("fits", FITS_SUFFIXES),
        ("ecsv", ECSV_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return fmt
    return None


def _read_checked(path: str | Path, spec: tuple[_Col, ...], kind: str) -> dict[str, np.ndarray]:
    """The columns of ``spec`` as numpy arrays (int64, float64, str or bool), types checked.

    Missing optional number columns come back as NaN; other missing optional
    columns are left out.
    """
    path = Path(path)
    err = _Reporter(path, kind)
    if not path.exists():
        raise MissingInputError(MissingInputError.PROBLEM, path=path, kind=kind)
    if not path.is_file():
        err.fail(None, None, "not a regular file")
    fmt = _format(path)
    if fmt is None:
        err.fail(None, None, f"unknown suffix, expected one of {_SUFFIX_HELP}")
    try:
        raw = _ParquetColumns(path, spec) if fmt == "parquet" else _read_astropy(path, fmt)
    except Exception as exc:  # every reader has its own exceptions for a bad file
        err.fail(None, None, f"cannot read as {fmt}: {type(exc).__name__}: {exc}")
    n = None
    out = {}
    present = ", ".join(raw) or "no columns"
    for col in spec:
        if col.name not in raw:
            if col.required:
                err.fail(col.name, None, f"missing (has: {present})")
            continue
        try:
            values, mask = raw.pop(col.name)  # the raw column goes as its converted one comes
        except Exception as exc:  # a Parquet column is read only now
            err.fail(col.name, None, f"cannot read as {fmt}: {type(exc).__name__}: {exc}")
        n = len(values)
        out[col.name] = _convert(err, col, values, mask)
        del values, mask
    if n is None:
        n = _row_count(raw)
    for col in spec:
        if col.name not in out and col.kind == "f":
            out[col.name] = np.full(n, np.nan)
    return out


def _row_count(raw: dict | _ParquetColumns) -> int:
    """Rows of a table whose wanted columns are all absent: those of any column."""
    if isinstance(raw, _ParquetColumns):
        return raw.rows()
    return len(next(iter(raw.values()))[0]) if raw else 0


class _ParquetColumns:
    """A Parquet file's wanted columns, each read when taken (`pop`).

    Parquet stores columns apart, so one column at a time is read and decoded:
    a catalogue of tens of millions of rows is never in memory whole. A small
    file (a visit's) is read in one call, which costs less than one per column.
    """

    WHOLE_ROWS = 1 << 20
    """Files of at most this many rows are read in one call (a visit's files)."""

    def __init__(self, path: Path, spec: tuple[_Col, ...]) -> None:
        import pyarrow.parquet as pq

        self._file = pq.ParquetFile(path)
        have = set(self._file.schema_arrow.names)
        self._names = [c.name for c in spec if c.name in have]
        self._read: dict[str, Any] = {}
        if self.rows() <= self.WHOLE_ROWS:
            table = self._file.read(columns=self._names, use_threads=False)
            self._read = dict(zip(self._names, table.columns, strict=True))

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def rows(self) -> int:
        """Rows of the file."""
        return int(self._file.metadata.num_rows)

    def pop(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """One column as (numpy values, null mask or None)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        self._names.remove(name)
        col = self._read.pop(name, None)
        if col is None:
            col = self._file.read(columns=[name], use_threads=True).column(0)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        mask = pc.is_null(col).to_numpy(zero_copy_only=False) if col.null_count else None
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            # Few distinct strings (bands): decode those, then index.
            enc = col.fill_null("").combine_chunks().dictionary_encode()
            words = np.array(enc.dictionary.to_pylist(), dtype=str)
            return words[enc.indices.to_numpy(zero_copy_only=False)], mask
        if mask is not None and pa.types.is_integer(col.type):
            return col.fill_null(0).to_numpy(zero_copy_only=False), mask
        if mask is not None and pa.types.is_boolean(col.type):
            return col.fill_null(False).to_numpy(zero_copy_only=False), mask
        return col.to_numpy(zero_copy_only=False), mask


def _read_astropy(path: Path, fmt: str) -> dict:
    """FITS or ECSV columns as (numpy values, mask or None)."""
    from astropy.table import Table

    table = Table.read(path, format="fits" if fmt == "fits" else "ascii.ecsv")
    out = {}
    for name in table.colnames:
        col = table[name]
        mask = np.asarray(col.mask) if getattr(col, "mask", None) is not None else None
        values = np.asarray(col.data if mask is None else col.data.data)
        if mask is not None and not mask.any():
            mask = None
        out[name] = (values, mask)
    return out


def _convert(err: _Reporter, col: _Col, values: np.ndarray, mask: np.ndarray | None):
    """Check a column's type and convert it; a null integer or string is an error."""
    if values.ndim != 1:
        err.fail(col.name, None, f"has shape {values.shape[1:]} per row, expected one value")
    k = values.dtype.kind
    if col.kind == "s":
        if k == "S":
            values = np.char.decode(values, "ascii", errors="replace")
        elif k == "O":
            values = values.astype(str)
        elif k != "U":
            err.fail(col.name, None, f"type {values.dtype} is not a string")
        if values.dtype.itemsize > 4:  # wider than one character
            values = np.char.strip(values)
    elif col.kind == "b":
        if k != "b":
            err.fail(col.name, None, f"type {values.dtype} is not a boolean")
    elif col.kind == "i":
        if k == "u" and values.size and values.max() > np.iinfo(np.int64).max:
            err.fail(col.name, int(np.argmax(values)), f"value {values.max()} exceeds int64")
        if k not in "iu":
            err.fail(col.name, None, f"type {values.dtype} is not an integer")
        values = values.astype(np.int64)
    else:
        if k not in "iuf":
            err.fail(col.name, None, f"type {values.dtype} is not a number")
        values = values.astype(np.float64)
        if mask is not None:
            values[mask] = np.nan
            mask = None
    if mask is not None and mask.any():
        err.fail(col.name, int(np.argmax(mask)), "value is missing (null)")
    return values


def _flat_columns(array: np.ndarray) -> dict[str, np.ndarray]:
    cols = {}
    for name in array.dtype.names:
        values = array[name]
        if name == "band" and values.dtype.kind in "iu":
            values = np.array(list(BANDS))[values]
        if values.ndim == 2 and values.shape[1] == NBANDS:
            for i, b in enumerate(BANDS):
                cols[f"{b}_{name}"] = values[:, i]
        elif values.ndim == 1:
            cols[name] = values
        else:
            raise ValueError(f"cannot write field {name!r} of shape {values.shape[1:]}")
    return cols


def _num(value) -> str:
    """A number for a message: ``95.2``, ``nan``, ``17``."""
    return repr(value.item() if isinstance(value, np.generic) else value)


class _Reporter:
    """Raises `BadInputError` for one file, and the checks shared by the readers."""

    def __init__(self, path: str | Path, kind: str) -> None:
        self.path = path
        self.kind = kind

    def fail(self, column: str | None, row: int | None, problem: str):
        raise BadInputError(
            problem,
            path=self.path,
            column=column,
            row=None if row is None else int(row),
            kind=self.kind,
        )

    def finite(self, name: str, values: np.ndarray) -> None:
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            self.fail(name, bad[0], f"value {_num(values[bad[0]])} is not a finite number")

    def range(self, name: str, values: np.ndarray, lo: float, hi: float, hi_open: bool) -> None:
        self.finite(name, values)
        above = values >= hi if hi_open else values > hi
        bad = np.flatnonzero((values < lo) | above)
        if bad.size:
            close = ")" if hi_open else "]"
            self.fail(
                name, bad[0], f"value {_num(values[bad[0]])} out of range [{lo:g}, {hi:g}{close}"
            )

    def sky(self, ra: np.ndarray, dec: np.ndarray) -> None:
        self.range("ra", ra, 0, 360, hi_open=True)
        self.range("dec", dec, -90, 90, hi_open=False)

    def at_least(self, name: str, values: np.ndarray, lo: float, allow_nan: bool) -> None:
        ok = (values >= lo) & np.isfinite(values)
        if allow_nan:
            ok |= np.isnan(values)
        bad = np.flatnonzero(~ok)
        if bad.size:
            self.fail(
                name, bad[0], f"value {_num(values[bad[0]])} is not a finite number >= {lo:g}"
            )

    def positive(self, name: str, values: np.ndarray) -> None:
        bad = np.flatnonzero(values <= 0)
        if bad.size:
            self.fail(name, bad[0], f"value {values[bad[0]]} is not > 0 (0 means 'none')")

    def unique(self, name: str, values: np.ndarray) -> None:
        order = np.argsort(values, kind="stable")
        dup = np.flatnonzero(values[order][1:] == values[order][:-1])
        if dup.size:
            # The duplicate pair whose second row comes first in the file.
            pairs = np.stack([order[dup], order[dup + 1]], axis=1)
            first, second = pairs[np.argmin(pairs[:, 1])]
            raise BadInputError(
                f"duplicate value {values[second]}, already in row {first}",
                path=self.path,
                column=name,
                row=int(second),
                kind=self.kind,
            )
