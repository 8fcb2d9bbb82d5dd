"""Benchmark: the Store's writes to SQLite, visit after visit of one field, against an earlier commit.

A field of ``--objects`` Objects over ``--chunks`` chunks, as the full-density
night's fields hold them: a ``--repeated`` fraction seen twice or more (with
flux statistics in several bands), the rest seen once. Each of ``--visits``
visits updates a tenth of them (`UPDATE_FRACTION`) as a visit's association
does: 95 % repeated Objects, 4.5 % seen once before (now repeated), 0.5 % new
ones; each gets one new DIASource. Every visit is stored with
`SqliteStorage.store_visit`, its WAL copied into the file by the checkpointer
as in the pipeline.

Measured: the Store's time per visit, and the bytes the process wrote
(``/proc/self/io``: the WAL and the checkpoints, from the first Store to the
close) per visit. The same visits run on this tree and, in a new process, on a
git worktree of ``--against`` (default ``HEAD``); both print a checksum of the
Objects read back at the end, which must agree.

    python benchmarks/bench_store.py [--against REV] [--visits N] [--objects N]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from against import add_arguments, compare  # noqa: E402

CHUNK_SHIFT = 28  # order-6 chunks of an order-20 fine index
UPDATE_FRACTION = 0.10
MIX = (0.95, 0.045, 0.005)
"""Of a visit's updated Objects: repeated before, seen once before, new."""


def field(n: int, chunks: int, repeated: float, rng: np.random.Generator) -> np.ndarray:
    """The field's Objects, in id order."""
    from association.columns import NBANDS, OBJECT_DTYPE

    objects = np.zeros(n, OBJECT_DTYPE)
    objects["diaObjectId"] = np.arange(1, n + 1)
    objects["fine"] = (1000 << CHUNK_SHIFT) + rng.integers(0, chunks << CHUNK_SHIFT, n)
    objects["ra"], objects["dec"] = rng.uniform(0, 3, n), rng.uniform(0, 3, n)
    objects["raErr"] = objects["decErr"] = 1e-5
    many = rng.random(n) < repeated
    objects["nDiaSources"] = np.where(many, rng.integers(2, 40, n), 1)
    objects["firstMjd"], objects["lastMjd"] = 59900.0, 60200.0
    bands = np.where(many[:, None], rng.random((n, NBANDS)) < 0.7, False)
    bands[np.arange(n), rng.integers(0, NBANDS, n)] = True
    for name in ("psfFluxMean", "psfFluxM2", "psfFluxWMean", "psfFluxMeanErr", "psfFluxChi2"):
        objects[name] = np.where(bands, rng.uniform(100, 1e4, (n, NBANDS)), np.nan)
    objects["psfFluxNdata"] = np.where(bands, 1 + many[:, None] * 5, 0)
    return objects


def visit_rows(
    objects: np.ndarray, visit: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The visit's changed Objects, their DIASources, and the new Objects among them.

    ``objects`` is updated in place.
    """
    from association.columns import DIASOURCE_DTYPE

    n_update = int(UPDATE_FRACTION * len(objects))
    many = np.flatnonzero(objects["nDiaSources"] >= 2)
    once = np.flatnonzero(objects["nDiaSources"] == 1)
    a, b = int(MIX[0] * n_update), int(MIX[1] * n_update)
    picked = np.concatenate(
        [rng.choice(many, min(a, many.size), False), rng.choice(once, min(b, once.size), False)]
    )
    band = visit % 6
    mjd = 60218.0 + visit * 0.001
    objects["nDiaSources"][picked] += 1
    objects["lastMjd"][picked] = mjd
    objects["psfFluxNdata"][picked, band] += 1
    objects["psfFluxMean"][picked, band] = rng.uniform(100, 1e4, picked.size)
    objects["psfFluxChi2"][picked, band] = rng.uniform(0, 10, picked.size)
    new = np.zeros(int(MIX[2] * n_update), objects.dtype)
    new["diaObjectId"] = objects["diaObjectId"].max() + 1 + np.arange(new.size)
    new["fine"] = rng.choice(objects["fine"], new.size)
    new["nDiaSources"], new["firstMjd"], new["lastMjd"] = 1, mjd, mjd
    changed = np.concatenate([objects[np.sort(picked)], new])
    sources = np.zeros(len(changed), DIASOURCE_DTYPE)
    sources["diaSourceId"] = visit * 1_000_000 + np.arange(1, len(changed) + 1)
    sources["visit"], sources["diaObjectId"] = visit, changed["diaObjectId"]
    sources["fine"], sources["ra"], sources["dec"] = changed["fine"], changed["ra"], changed["dec"]
    sources["midpointMjdTai"], sources["band"] = mjd, band
    sources["psfFlux"], sources["psfFluxErr"] = 1000.0, 10.0
    return changed, sources, new


def written_bytes() -> int:
    """Bytes this process has caused to be written to storage."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def run(args: argparse.Namespace) -> dict:
    """Store the visits with the code importable now; times in seconds."""
    from association.storage import FrozenParameters, VisitRecord, open_storage

    rng = np.random.default_rng(11)
    objects = field(args.objects, args.chunks, args.repeated, rng)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(None, tmp, FrozenParameters(6, 20), create=True)
        storage.bulk_load_objects(objects)
        first = written_bytes()
        for visit in range(1, args.visits + 1):
            changed, sources, new = visit_rows(objects, visit, rng)
            objects = np.concatenate([objects, new])
            record = VisitRecord(visit, 60218.0, 1.0, 1.0, "r", len(sources), 0, len(new), 0)
            t0 = time.perf_counter()
            storage.store_visit(record, sources, changed)
            times.append(time.perf_counter() - t0)
        lo, hi = 1000 << CHUNK_SHIFT, (1000 + args.chunks) << CHUNK_SHIFT
        back = storage.load_objects(lo, hi)
        storage.close()
        wrote = written_bytes() - first
    digest = hashlib.sha256()
    for name in ("diaObjectId", "nDiaSources", "lastMjd", "psfFluxNdata", "psfFluxMean"):
        digest.update(np.ascontiguousarray(back[name]).tobytes())
    return {
        "store_p50_s": statistics.median(times),
        "store_p95_s": float(np.percentile(times, 95)),
        "written_mb_per_visit": wrote / args.visits / 1e6,
        "objects": len(back),
        "checksum": digest.hexdigest()[:16],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    p.add_argument("--visits", type=int, default=60)
    p.add_argument("--objects", type=int, default=180_000, help="Objects in the field")
    p.add_argument("--chunks", type=int, default=22, help="chunks the field covers")
    p.add_argument("--repeated", type=float, default=0.14, help="fraction seen twice or more")
    args = p.parse_args()
    compare(
        __file__,
        "store",
        args,
        run,
        {"written_ratio": "written_mb_per_visit", "store_p50_ratio": "store_p50_s"},
        "same_objects",
        "bench_store: the two trees stored different Objects",
    )


if __name__ == "__main__":
    main()
