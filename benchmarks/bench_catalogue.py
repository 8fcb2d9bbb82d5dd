"""Benchmark: a Slice's catalogue taking in new sky, against an earlier commit's.

A night moves across the sky: each visit needs ``--field`` chunks, the next
visit's field is ``--step`` chunks further along a ring of ``--ring`` chunks,
so every visit brings new chunks and, the ring being larger than the memory
budget, old ones are evicted. Per visit, the Slice's work on the catalogue
once its database read is done, as `association.stages.load` and
`association.stages.update` do it:

- each new chunk's recent DIASources, as the database returns them, cut to
  the latest per Object (`association.storage.rows.latest_per_object`);
- the new chunks put in the catalogue, then evictions down to the budget;
- the cross-match's columns of the field, and the recent DIASources of
  ``--matched`` of its Objects (`Catalogue.columns`, `Catalogue.recent_for`).

The same visits run on this tree and, in a new process, on a git worktree
of ``--against`` (default ``HEAD``); both print a checksum of what every
visit read from the catalogue, which must agree (which chunks stay held in
between may differ). Prints JSON with the medians
per visit and their ratio.

    python benchmarks/bench_catalogue.py [--against REV] [--visits N] [--budget-mb MB]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from against import add_arguments, compare  # noqa: E402

CHUNK_SHIFT = 28  # order-6 chunks of an order-20 fine index
MATCH = ("diaObjectId", "ra", "dec", "isVariable")


def chunk_rows(chunk: int, per_chunk: int, history: int) -> tuple[np.ndarray, np.ndarray]:
    """A chunk's Objects (ids in fine order, as read) and its DIASources in (mjd, id) order."""
    from association.columns import DIASOURCE_DTYPE, OBJECT_DTYPE

    rng = np.random.default_rng(chunk)
    n = int(rng.integers(per_chunk // 2, per_chunk * 3 // 2))
    objects = np.zeros(n, OBJECT_DTYPE)
    objects["fine"] = np.sort((chunk << CHUNK_SHIFT) + rng.integers(0, 1 << CHUNK_SHIFT, n))
    objects["diaObjectId"] = chunk * 10_000_000 + rng.permutation(n) + 1
    objects["ra"], objects["dec"] = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    owner = np.repeat(np.arange(n), rng.integers(0, 2 * history, n))
    m = len(owner)
    sources = np.zeros(m, DIASOURCE_DTYPE)
    sources["diaObjectId"] = objects["diaObjectId"][owner]
    sources["diaSourceId"] = chunk * 100_000_000 + np.arange(1, m + 1)
    sources["midpointMjdTai"] = rng.uniform(60000, 60300, m)
    sources["fine"] = objects["fine"][owner]
    order = np.lexsort((sources["diaSourceId"], sources["midpointMjdTai"]))
    return objects, sources[order]


def run(args: argparse.Namespace) -> dict:
    """Play the visits on the code importable now; times in seconds."""
    from association.catalogue import Catalogue, CatalogueConfig
    from association.storage.rows import latest_per_object

    cat = Catalogue(CatalogueConfig(max_megabytes=args.budget_mb), CHUNK_SHIFT)
    rng = np.random.default_rng(7)
    times, loaded = [], 0
    digest = hashlib.sha256()  # of what each visit saw; which chunks stay held may differ
    for visit in range(args.visits):
        first = visit * args.step
        field = np.arange(first, first + args.field) % args.ring
        cat.pin(visit, field)
        missing = cat.missing(field)
        reads = [(c, *chunk_rows(c, args.per_chunk, args.history)) for c in missing.tolist()]
        t0 = time.perf_counter()
        reads = [(c, o, latest_per_object(s, 10)) for c, o, s in reads]
        if hasattr(cat, "put_all"):
            cat.put_all(reads)
        else:
            for read in reads:
                cat.put(*read)
        columns = cat.columns(field, MATCH)
        pick = rng.choice(len(columns["diaObjectId"]), args.matched, replace=False)
        recent = cat.recent_for(columns["diaObjectId"][pick])
        cat.unpin(visit)
        times.append(time.perf_counter() - t0)
        loaded += len(missing)
        for values in (*columns.values(), recent["diaSourceId"], recent["midpointMjdTai"]):
            digest.update(np.ascontiguousarray(values).tobytes())
    return {
        "visit_p50_s": statistics.median(times),
        "visit_p95_s": float(np.percentile(times, 95)),
        "total_s": sum(times),
        "chunks_loaded": loaded,
        "objects_held": cat.stats()["n_objects"],
        "evictions": cat.stats()["evictions"],
        "checksum": digest.hexdigest()[:16],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    p.add_argument("--visits", type=int, default=500)
    p.add_argument("--field", type=int, default=40, help="chunks per visit")
    p.add_argument("--step", type=int, default=6, help="new chunks per visit")
    p.add_argument("--ring", type=int, default=2400, help="chunks the night crosses")
    p.add_argument("--per-chunk", type=int, default=7000, help="mean Objects per chunk")
    p.add_argument("--history", type=int, default=3, help="mean DIASources per Object")
    p.add_argument("--matched", type=int, default=5000, help="Objects matched per visit")
    p.add_argument("--budget-mb", type=float, default=4096.0, help="as the pipeline's")
    args = p.parse_args()
    compare(
        __file__,
        "catalogue",
        args,
        run,
        {"visit_p50_ratio": "visit_p50_s", "total_ratio": "total_s"},
        "same_reads",
        "bench_catalogue: the two trees read different catalogues",
    )


if __name__ == "__main__":
    main()
