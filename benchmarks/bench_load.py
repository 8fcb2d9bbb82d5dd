"""Benchmark: bulk loads into SQLite, and cold loads of a field of view.

Makes N Objects (default 2,000,000) at random positions in a 1.75 deg radius
field, and their past DIASources (0 to 2*H-1 each, default H = 4, time-ordered
within each Object as the simulator writes them). Then:

- bulk-loads both into a new SQLite file with `SqliteStorage.bulk_load_objects`
  and `bulk_load_diasources` (rows in random order for the Objects, as read
  from a file), against the naive reference: SQLAlchemy
  ``conn.execute(insert(table), list_of_dicts)`` on the first ``--naive-rows``
  of the same data, into another new file;
- each time in a new process, loads the field's chunk ranges (order-6 chunks,
  order-20 fine index) with `SqliteStorage.load_objects`, and with the naive
  reference: SQLAlchemy ``conn.execute(select(objects)).fetchall()`` and a
  per-row conversion;
- each time in a new process, loads the same ranges' recent DIASources with
  `SqliteStorage.load_recent_diasources`, natively and through the driver
  (`SqlStorage`).

Prints JSON; the targets are a cold Object load <= 5 s and bulk loads >= 300k rows/s.

    python benchmarks/bench_load.py [--rows N] [--history H] [--repeats K]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FOV_RA, FOV_DEC, FOV_RADIUS = 150.0, 2.0, 1.75
CHUNK_ORDER, FINE_ORDER = 6, 20
TARGET_S = 5.0
TARGET_BULK_ROWS_PER_S = 300_000


def frozen_parameters():
    """The partition the benchmark's database is made with."""
    from association.storage import FrozenParameters

    return FrozenParameters(CHUNK_ORDER, FINE_ORDER)


def fov_objects(n: int, seed: int = 0) -> np.ndarray:
    """``n`` Objects uniform on the sky within the field, random contents."""
    import healpy as hp

    from association.columns import NBANDS, OBJECT_DTYPE

    rng = np.random.default_rng(seed)
    # Uniform on the spherical cap: cos(distance) uniform.
    cos_r = rng.uniform(np.cos(np.radians(FOV_RADIUS)), 1.0, n)
    r, pa = np.arccos(cos_r), rng.uniform(0, 2 * np.pi, n)
    d0, a0 = np.radians(FOV_DEC), np.radians(FOV_RA)
    dec = np.arcsin(np.sin(d0) * np.cos(r) + np.cos(d0) * np.sin(r) * np.cos(pa))
    ra = a0 + np.arctan2(np.sin(pa) * np.sin(r) * np.cos(d0), np.cos(r) - np.sin(d0) * np.sin(dec))
    out = np.zeros(n, dtype=OBJECT_DTYPE)
    out["diaObjectId"] = rng.permutation(n) + 1
    out["ra"], out["dec"] = np.degrees(ra) % 360.0, np.degrees(dec)
    out["fine"] = hp.ang2pix(1 << FINE_ORDER, out["ra"], out["dec"], nest=True, lonlat=True)
    out["nDiaSources"] = rng.integers(1, 200, n)
    out["firstMjd"] = rng.uniform(60000, 60300, n)
    out["lastMjd"] = out["firstMjd"] + rng.uniform(0, 60, n)
    out["psfFluxNdata"] = rng.integers(0, 40, (n, NBANDS))
    out["psfFluxMean"] = rng.normal(2000, 500, (n, NBANDS))
    out["psfFluxMean"][out["psfFluxNdata"] == 0] = np.nan
    out["psfFluxM2"] = rng.uniform(0, 1e6, (n, NBANDS))
    out["isVariable"] = rng.random(n) < 0.05
    return out


def fov_history(objects: np.ndarray, mean: int, seed: int = 1) -> np.ndarray:
    """Past DIASources of ``objects``: 0..2*mean-1 each, by Object and time, as simulated."""
    from association.columns import DIASOURCE_DTYPE, NBANDS

    rng = np.random.default_rng(seed)
    objects = objects[np.argsort(objects["diaObjectId"])]
    per = rng.integers(0, 2 * mean, len(objects))
    owner = np.repeat(np.arange(len(objects)), per)
    m = len(owner)
    out = np.zeros(m, dtype=DIASOURCE_DTYPE)
    out["diaSourceId"] = 10 * len(objects) + np.arange(1, m + 1)
    out["visit"] = -1
    out["diaObjectId"] = objects["diaObjectId"][owner]
    out["ra"] = objects["ra"][owner] + rng.normal(0, 1e-5, m)
    out["dec"] = objects["dec"][owner] + rng.normal(0, 1e-5, m)
    out["raErr"] = out["decErr"] = 2e-5
    t = rng.uniform(60000, 60300, m)
    out["midpointMjdTai"] = t[np.lexsort((t, owner))]  # time order within each Object
    out["band"] = rng.integers(0, NBANDS, m)
    out["psfFlux"] = rng.normal(2000, 500, m)
    out["psfFluxErr"] = rng.uniform(10, 100, m)
    out["snr"] = np.where(rng.random(m) < 0.1, np.nan, out["psfFlux"] / out["psfFluxErr"])
    out["fine"] = objects["fine"][owner]
    return out


def naive_bulk(engine, table, records: np.ndarray, columns) -> None:
    """The reference: a list of dicts through ``conn.execute(insert(table), rows)``."""
    from sqlalchemy import insert

    rows = []
    for i in range(len(records)):
        row = {}
        for name, values in columns.items():
            v = values[i].item()
            row[name] = None if isinstance(v, float) and v != v else v
        rows.append(row)
    with engine.begin() as conn:
        conn.execute(insert(table), rows)


def timed_bulk_loads(tmp: Path, objects: np.ndarray, history: np.ndarray, naive_rows: int) -> dict:
    """Ours on all rows, the naive reference on the first ``naive_rows``; rows/s of each."""
    from association.columns import BANDS
    from association.storage import open_storage
    from association.storage import tables as db
    from association.storage.rows import object_columns

    storage = open_storage(None, tmp / "ours", frozen_parameters(), create=True)
    out = {}
    for name, load, rows in (
        ("objects", storage.bulk_load_objects, objects),
        ("diasources", storage.bulk_load_diasources, history),
    ):
        start, cpu = time.perf_counter(), time.process_time()
        load(rows)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        out[name] = {"rows": len(rows), "seconds": round(seconds, 2)}
        out[name]["rows_per_s"] = round(len(rows) / seconds)
        # CPU time, all threads: a steadier figure on a shared machine.
        out[name]["cpu_seconds"] = round(cpu, 2)
    storage.close()

    naive_storage = open_storage(None, tmp / "naive", frozen_parameters(), create=True)
    naive = naive_storage.engine
    letters = np.array(list(BANDS))
    for name, table, rows in (
        ("objects", db.objects, objects[:naive_rows]),
        ("diasources", db.diasources, history[:naive_rows]),
    ):
        if name == "objects":
            columns = object_columns(rows)
        else:
            columns = {c.name: rows[c.name] for c in table.columns}
            columns["band"] = letters[rows["band"]]
        start = time.perf_counter()
        naive_bulk(naive, table, rows, columns)
        seconds = time.perf_counter() - start
        out[name]["naive_rows"] = len(rows)
        out[name]["naive_seconds"] = round(seconds, 2)
        out[name]["naive_rows_per_s"] = round(len(rows) / seconds)
        out[name]["speedup"] = round(out[name]["rows_per_s"] / out[name]["naive_rows_per_s"], 1)
        out[name]["meets_target"] = out[name]["rows_per_s"] >= TARGET_BULK_ROWS_PER_S
    naive_storage.close()
    return out


def fov_ranges() -> list[tuple[int, int]]:
    """The field's chunks as merged half-open fine-index ranges."""
    import healpy as hp

    vec = hp.ang2vec(FOV_RA, FOV_DEC, lonlat=True)
    chunks = np.unique(
        hp.query_disc(1 << CHUNK_ORDER, vec, np.radians(FOV_RADIUS), inclusive=True, nest=True)
    )
    shift = 2 * (FINE_ORDER - CHUNK_ORDER)
    ranges: list[list[int]] = []
    for c in chunks.tolist():
        if ranges and ranges[-1][1] == c << shift:
            ranges[-1][1] = (c + 1) << shift
        else:
            ranges.append([c << shift, (c + 1) << shift])
    return [(lo, hi) for lo, hi in ranges]


def naive_load(engine, lo: int, hi: int) -> np.ndarray:
    """The reference: fetchall through SQLAlchemy, one row at a time into numpy."""
    from sqlalchemy import select

    from association.columns import BANDS, OBJECT_DTYPE
    from association.storage import tables as db

    t = db.objects
    with engine.connect() as conn:
        rows = conn.execute(select(t).where(t.c.fine >= lo, t.c.fine < hi)).fetchall()
    out = np.empty(len(rows), dtype=OBJECT_DTYPE)
    nan = float("nan")

    def value(m, name):
        return nan if m[name] is None else m[name]

    def band(m, name):
        return [value(m, f"{b}_{name}") for b in BANDS]

    for i, r in enumerate(rows):
        m = r._mapping
        out[i] = (
            m["diaObjectId"],
            m["ra"],
            m["dec"],
            value(m, "raErr"),
            value(m, "decErr"),
            m["fine"],
            m["nDiaSources"],
            m["firstMjd"],
            m["lastMjd"],
            [m[f"{b}_psfFluxNdata"] for b in BANDS],
            band(m, "psfFluxMean"),
            band(m, "psfFluxM2"),
            band(m, "psfFluxWMean"),
            band(m, "psfFluxMeanErr"),
            band(m, "psfFluxChi2"),
            m["isVariable"],
        )
    return out[np.argsort(out["diaObjectId"], kind="stable")]


def child(mode: str, db_path: str, ranges: list[tuple[int, int]]) -> dict:
    """One cold load in this (new) process.

    ``mode``: ``native`` or ``naive`` (Objects), ``recent-native`` or
    ``recent-driver`` (recent DIASources).
    """
    start = time.perf_counter()
    from association.storage import open_storage

    storage = open_storage(
        f"sqlite:///{db_path}",
        Path(db_path).parent,
        frozen_parameters(),
        native_access=mode != "recent-driver",
    )
    if mode.startswith("recent"):
        parts = [storage.load_recent_diasources(lo, hi) for lo, hi in ranges]
    elif mode == "native":
        parts = [storage.load_objects(lo, hi) for lo, hi in ranges]
    else:
        parts = [naive_load(storage.engine, lo, hi) for lo, hi in ranges]
    rows = np.concatenate(parts)
    seconds = time.perf_counter() - start
    storage.close()
    return {
        "seconds": seconds,
        "rows": len(rows),
        "sha1": hashlib.sha1(rows.tobytes()).hexdigest(),
    }


def run_child(mode: str, db_path: Path, ranges) -> dict:
    start = time.perf_counter()
    cmd = [sys.executable, __file__, "--child", mode, str(db_path), json.dumps(ranges)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--history", type=int, default=4, help="mean past DIASources per Object")
    parser.add_argument("--naive-rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--child", nargs=3, metavar=("MODE", "DB", "RANGES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        mode, db_path, ranges = args.child
        print(json.dumps(child(mode, db_path, [tuple(r) for r in json.loads(ranges)])))
        return

    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        objects = fov_objects(args.rows)
        history = fov_history(objects, args.history)
        bulk = timed_bulk_loads(Path(tmp), objects, history, args.naive_rows)
        db_path = Path(tmp) / "ours" / "nightpipe.sqlite"
        ranges = fov_ranges()
        # Warm the numba cache once, so "cold" means a new process, not a compile.
        run_child("native", db_path, ranges[:1])
        run_child("recent-native", db_path, ranges[:1])
        modes = ("native", "naive", "recent-native", "recent-driver")
        runs = {mode: [] for mode in modes}
        for i in range(args.repeats):
            for mode in modes:
                if mode != "recent-driver" or i == 0:  # the slow reference once
                    runs[mode].append(run_child(mode, db_path, ranges))
        size_mb = db_path.stat().st_size / 1e6

    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    proc = {m: statistics.median(r["process_seconds"] for r in rs) for m, rs in runs.items()}
    rows = runs["native"][0]["rows"]
    recent_rows = runs["recent-native"][0]["rows"]
    report = {
        "benchmark": "bulk loads and cold field loads, SQLite",
        "rows_in_db": args.rows,
        "history_rows_in_db": len(history),
        "db_size_mb": round(size_mb, 1),
        "bulk_load": bulk,
        "bulk_target_rows_per_s": TARGET_BULK_ROWS_PER_S,
        "fine_ranges": len(ranges),
        "repeats": args.repeats,
        "load_objects": {
            "rows_loaded": rows,
            "native_median_s": round(med["native"], 3),
            "native_rows_per_s": round(rows / med["native"]),
            "native_process_median_s": round(proc["native"], 3),
            "naive_median_s": round(med["naive"], 3),
            "naive_rows_per_s": round(rows / med["naive"]),
            "naive_process_median_s": round(proc["naive"], 3),
            "speedup_naive_over_native": round(med["naive"] / med["native"], 2),
            "same_result": len({r["sha1"] for m in ("native", "naive") for r in runs[m]}) == 1,
            "target_s": TARGET_S,
            "meets_target": med["native"] <= TARGET_S,
            "all_native_s": [round(r["seconds"], 3) for r in runs["native"]],
            "all_naive_s": [round(r["seconds"], 3) for r in runs["naive"]],
        },
        "load_recent_diasources": {
            "rows_loaded": recent_rows,
            "native_median_s": round(med["recent-native"], 3),
            "native_s_per_1M_rows": round(med["recent-native"] / recent_rows * 1e6, 3),
            "driver_s": round(med["recent-driver"], 3),
            "driver_s_per_1M_rows": round(med["recent-driver"] / recent_rows * 1e6, 3),
            "speedup_driver_over_native": round(med["recent-driver"] / med["recent-native"], 2),
            "same_result": len(
                {r["sha1"] for m in ("recent-native", "recent-driver") for r in runs[m]}
            )
            == 1,
            "all_native_s": [round(r["seconds"], 3) for r in runs["recent-native"]],
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
