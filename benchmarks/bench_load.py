"""Benchmark: cold load of a field of view's Objects from SQLite.

Bulk-loads N Objects (default 2,000,000) at random positions in a 1.75 deg
radius field into a SQLite file, then, each time in a new process, loads the
field's chunk ranges (order-6 chunks, order-20 fine index) with
`association.store.load_objects`, and with the naive reference: SQLAlchemy
``conn.execute(select(objects)).fetchall()`` and a per-row conversion. Prints
JSON with the medians and their ratio; the target is a cold load <= 5 s.

    python benchmarks/bench_load.py [--rows N] [--repeats K]
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


def fov_objects(n: int, seed: int = 0) -> np.ndarray:
    """``n`` Objects uniform on the sky within the field, random contents."""
    import healpy as hp

    from association.schema import NBANDS, OBJECT_DTYPE

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

    from association import db
    from association.schema import BANDS, OBJECT_DTYPE

    t = db.objects
    with engine.connect() as conn:
        rows = conn.execute(select(t).where(t.c.fine >= lo, t.c.fine < hi)).fetchall()
    out = np.empty(len(rows), dtype=OBJECT_DTYPE)
    nan = float("nan")
    for i, r in enumerate(rows):
        m = r._mapping
        out[i] = (
            m["diaObjectId"],
            m["ra"],
            m["dec"],
            m["fine"],
            m["nDiaSources"],
            m["firstMjd"],
            m["lastMjd"],
            [m[f"{b}_psfFluxNdata"] for b in BANDS],
            [nan if m[f"{b}_psfFluxMean"] is None else m[f"{b}_psfFluxMean"] for b in BANDS],
            [nan if m[f"{b}_psfFluxM2"] is None else m[f"{b}_psfFluxM2"] for b in BANDS],
            m["isVariable"],
        )
    return out[np.argsort(out["diaObjectId"], kind="stable")]


def child(mode: str, db_path: str, ranges: list[tuple[int, int]]) -> dict:
    """One cold load in this (new) process."""
    start = time.perf_counter()
    from association.db import make_engine
    from association.store import load_objects

    engine = make_engine(f"sqlite:///{db_path}", Path(db_path).parent)
    load = load_objects if mode == "native" else naive_load
    parts = [load(engine, lo, hi) for lo, hi in ranges]
    objects = np.concatenate(parts)
    seconds = time.perf_counter() - start
    engine.dispose()
    return {
        "seconds": seconds,
        "rows": len(objects),
        "sha1": hashlib.sha1(objects.tobytes()).hexdigest(),
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--child", nargs=3, metavar=("MODE", "DB", "RANGES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        mode, db_path, ranges = args.child
        print(json.dumps(child(mode, db_path, [tuple(r) for r in json.loads(ranges)])))
        return

    from association.db import create_schema, make_engine
    from association.store import bulk_load_objects

    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        engine = make_engine(None, tmp)
        create_schema(engine)
        objects = fov_objects(args.rows)
        start = time.perf_counter()
        bulk_load_objects(engine, objects)
        bulk_seconds = time.perf_counter() - start
        engine.dispose()
        db_path = Path(tmp) / "nightpipe.sqlite"
        ranges = fov_ranges()
        # Warm the numba cache once, so "cold" means a new process, not a compile.
        run_child("native", db_path, ranges[:1])
        runs = {"native": [], "naive": []}
        for _ in range(args.repeats):
            for mode in runs:
                runs[mode].append(run_child(mode, db_path, ranges))
        size_mb = db_path.stat().st_size / 1e6

    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    proc = {m: statistics.median(r["process_seconds"] for r in rs) for m, rs in runs.items()}
    rows = runs["native"][0]["rows"]
    report = {
        "benchmark": "load_objects cold, SQLite",
        "rows_loaded": rows,
        "rows_in_db": args.rows,
        "fine_ranges": len(ranges),
        "db_size_mb": round(size_mb, 1),
        "bulk_load_seconds": round(bulk_seconds, 2),
        "bulk_load_rows_per_s": round(args.rows / bulk_seconds),
        "repeats": args.repeats,
        "native_median_s": round(med["native"], 3),
        "native_rows_per_s": round(rows / med["native"]),
        "native_process_median_s": round(proc["native"], 3),
        "naive_median_s": round(med["naive"], 3),
        "naive_rows_per_s": round(rows / med["naive"]),
        "naive_process_median_s": round(proc["naive"], 3),
        "speedup_naive_over_native": round(med["naive"] / med["native"], 2),
        "same_result": len({r["sha1"] for rs in runs.values() for r in rs}) == 1,
        "target_s": TARGET_S,
        "meets_target": med["native"] <= TARGET_S,
        "all_native_s": [round(r["seconds"], 3) for r in runs["native"]],
        "all_naive_s": [round(r["seconds"], 3) for r in runs["naive"]],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
