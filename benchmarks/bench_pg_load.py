"""Benchmark: loading a field's Objects and recent DIASources from PostgreSQL.

Starts a throwaway PostgreSQL server (as the tests do), bulk-loads N Objects
(default 500,000) in a 1.75 deg field with H past DIASources each on average,
then loads the field's chunks the way a Slice does, through binary COPY
(`PostgresStorage`, the default) and through the driver's rows
(`SqlStorage`, the reference), alternating, K times each. The results must
be identical.

Prints JSON. ``python benchmarks/bench_pg_load.py [--rows N] [--history H] [--repeats K]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_load import CHUNK_ORDER, FINE_ORDER, fov_history, fov_objects, fov_ranges  # noqa: E402


def main() -> None:
    from association.storage import FrozenParameters, Storage, open_storage
    from tests.pgserver import PgServer

    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--history", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    objects = fov_objects(args.rows)
    sources = fov_history(objects, args.history)
    ranges = fov_ranges()

    def load(storage: Storage) -> tuple[float, float, np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        objs = [storage.load_objects(int(lo), int(hi)) for lo, hi in ranges]
        t1 = time.perf_counter()
        recent = [storage.load_recent_diasources(int(lo), int(hi), 10) for lo, hi in ranges]
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, np.concatenate(objs), np.concatenate(recent)

    with PgServer() as server:
        url, run_dir = server.create_database("bench"), server.base
        frozen = FrozenParameters(CHUNK_ORDER, FINE_ORDER)
        storages = {
            "copy": open_storage(url, run_dir, frozen, create=True),
            "driver": open_storage(url, run_dir, frozen, native_access=False),
        }
        storages["copy"].bulk_load_objects(objects)
        storages["copy"].bulk_load_diasources(sources)
        times: dict[str, dict[str, list[float]]] = {
            k: {"objects": [], "recent": []} for k in ("copy", "driver")
        }
        results = {}
        for _ in range(args.repeats):
            for kind, storage in storages.items():
                t_obj, t_rec, objs, recent = load(storage)
                times[kind]["objects"].append(t_obj)
                times[kind]["recent"].append(t_rec)
                results[kind] = (objs, recent)
        for storage in storages.values():
            storage.close()

    def same(a: np.ndarray, b: np.ndarray) -> bool:
        return a.dtype == b.dtype and all(
            np.array_equal(a[n], b[n], equal_nan=a[n].dtype.kind == "f") for n in a.dtype.names
        )

    med = {k: {w: statistics.median(v) for w, v in t.items()} for k, t in times.items()}
    print(
        json.dumps(
            {
                "benchmark": "pg_load",
                "objects": args.rows,
                "recent_diasources": len(results["copy"][1]),
                "chunks": len(ranges),
                "median_s": med,
                "all_s": times,
                "speedup_objects": med["driver"]["objects"] / med["copy"]["objects"],
                "speedup_recent": med["driver"]["recent"] / med["copy"]["recent"],
                "identical": same(*[r[0] for r in results.values()])
                and same(*[r[1] for r in results.values()]),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
