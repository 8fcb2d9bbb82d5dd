"""Benchmark: writing a visit's alert file, compiled encoder vs fastavro.

For N alerts (default 10,000 and 40,000) with 5 previous DIASources each,
times `association.alerts.packets.write_visit_alerts` (numba encoder) and the
reference path of `tests.oracles.alerts` (one `build_alert` dict per alert, as
the Store stage once built them, then ``fastavro.writer`` via `write_alerts`),
both with the deflate codec, alternating in the same run. Checks that both
files decode to the same records and prints JSON with the medians and their
ratio; the per-visit budget is 1 s for everything. For the breakdown it also times the encoder
with no compression, and with zlib's default level 6 (fastavro's; the visit
path uses `DEFLATE_LEVEL`).

    python benchmarks/bench_alerts.py [--alerts N [N ...]] [--prv K] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VISIT = 123_456
BUDGET_S = 1.0


def visit_arrays(n: int, n_prv: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A visit's DIASources, their Objects (sorted) and ``n_prv`` earlier DIASources each."""
    from association.columns import DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE

    rng = np.random.default_rng(seed)
    ra = 150.0 + rng.uniform(-1.75, 1.75, n)
    dec = 2.0 + rng.uniform(-1.75, 1.75, n)
    flux = rng.lognormal(7.5, 1.0, n).astype(np.float32)

    objects = np.zeros(n, OBJECT_DTYPE)
    objects["diaObjectId"] = np.sort(rng.choice(10**12, n, replace=False)) + 1
    objects["ra"], objects["dec"] = ra, dec
    objects["nDiaSources"] = n_prv + 1
    objects["firstMjd"] = 60000.0 + rng.uniform(0, 30, n)
    objects["lastMjd"] = 60031.2
    ndata = rng.multinomial(n_prv + 1, np.full(NBANDS, 1 / NBANDS), n)
    objects["psfFluxNdata"] = ndata
    objects["psfFluxMean"] = np.where(
        ndata > 0, flux[:, None] * rng.normal(1, 0.05, (n, NBANDS)), np.nan
    )
    objects["psfFluxM2"] = np.where(ndata > 1, rng.uniform(0, 1e5, (n, NBANDS)), 0.0)
    objects["isVariable"] = rng.random(n) < 0.05

    def detections(m: int, obj: np.ndarray, mjd: np.ndarray, ids: np.ndarray) -> np.ndarray:
        out = np.zeros(m, DIASOURCE_DTYPE)
        out["diaSourceId"] = ids
        out["visit"] = VISIT
        out["diaObjectId"] = objects["diaObjectId"][obj]
        out["ra"] = objects["ra"][obj] + rng.normal(0, 2e-5, m)
        out["dec"] = objects["dec"][obj] + rng.normal(0, 2e-5, m)
        out["raErr"] = rng.uniform(5e-6, 3e-5, m)
        out["decErr"] = rng.uniform(5e-6, 3e-5, m)
        out["raErr"][rng.random(m) < 0.02] = np.nan
        out["midpointMjdTai"] = mjd
        out["band"] = rng.integers(0, NBANDS, m)
        out["psfFlux"] = flux[obj] * rng.normal(1, 0.1, m)
        out["psfFluxErr"] = rng.uniform(20, 200, m)
        out["snr"] = out["psfFlux"] / out["psfFluxErr"]
        out["snr"][rng.random(m) < 0.05] = np.nan
        return out

    sources = detections(n, np.arange(n), np.full(n, 60031.2), VISIT * 10**6 + np.arange(n))
    sources["band"] = 2
    obj = np.repeat(np.arange(n), n_prv)
    mjd = 60000.0 + np.sort(rng.uniform(0, 31, (n, n_prv)), axis=1).ravel()
    recent = detections(n * n_prv, obj, mjd, rng.choice(10**12, n * n_prv, replace=False))
    perm = rng.permutation(n)
    return sources[perm], objects, recent


def fastavro_path(path: Path, sources: np.ndarray, objects: np.ndarray, recent: np.ndarray) -> int:
    """The reference: the Store stage's dict-per-alert ``build_alerts``, then fastavro."""
    from tests.oracles.alerts import build_alert, write_alerts

    alerting = sources[sources["ssObjectId"] == 0]
    obj_at = np.searchsorted(objects["diaObjectId"], alerting["diaObjectId"])
    lo = np.searchsorted(recent["diaObjectId"], alerting["diaObjectId"], side="left")
    hi = np.searchsorted(recent["diaObjectId"], alerting["diaObjectId"], side="right")
    alerts = [
        build_alert(int(src["diaSourceId"]), src, objects[obj_at[i]], recent[lo[i] : hi[i]])
        for i, src in enumerate(alerting)
    ]
    return write_alerts(path, alerts)


def same_records(a, b) -> bool:
    """Equal decoded records, NaN equal to NaN."""
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same_records(a[k], b[k]) for k in a)
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same_records, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def run(n: int, n_prv: int, repeats: int, tmp: Path) -> dict:
    from association.alerts.avro import write_alert_file
    from association.alerts.packets import read_alerts, write_visit_alerts

    sources, objects, recent = visit_arrays(n, n_prv)
    ids = sources["diaObjectId"]
    indexed = (
        sources,
        objects,
        np.searchsorted(objects["diaObjectId"], ids),
        recent,
        np.searchsorted(recent["diaObjectId"], ids, side="left"),
        np.searchsorted(recent["diaObjectId"], ids, side="right"),
    )
    modes = {
        "numba": lambda path: write_visit_alerts(path, sources, objects, recent),
        "fastavro": lambda path: fastavro_path(path, sources, objects, recent),
        "numba_no_compression": lambda path: write_alert_file(path, *indexed, codec="null"),
        "numba_zlib_level6": lambda path: write_alert_file(path, *indexed, compression_level=6),
    }
    paths = {mode: tmp / f"{mode}_{n}.avro" for mode in modes}
    write_visit_alerts(paths["numba"], sources[:10], objects, recent)  # compile or load cache
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode, write in modes.items():
            start = time.perf_counter()
            count = write(paths[mode])
            times[mode].append(time.perf_counter() - start)
            assert count == n
    ref = read_alerts(paths["fastavro"])
    same = all(same_records(read_alerts(paths[m]), ref) for m in modes if m != "fastavro")
    med = {mode: statistics.median(t) for mode, t in times.items()}
    return {
        "alerts": n,
        "prv_per_alert": n_prv,
        "repeats": repeats,
        "numba_median_s": round(med["numba"], 4),
        "fastavro_median_s": round(med["fastavro"], 4),
        "speedup_fastavro_over_numba": round(med["fastavro"] / med["numba"], 1),
        "numba_us_per_alert": round(med["numba"] / n * 1e6, 2),
        "numba_no_compression_median_s": round(med["numba_no_compression"], 4),
        "numba_zlib_level6_median_s": round(med["numba_zlib_level6"], 4),
        "file_mb": {m: round(p.stat().st_size / 1e6, 2) for m, p in paths.items()},
        "same_records": len(ref) == n and same,
        "within_budget": med["numba"] <= BUDGET_S,
        "all_s": {m: [round(t, 4) for t in ts] for m, ts in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--prv", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from association.alerts.packets import CODEC

    with tempfile.TemporaryDirectory(prefix="bench_alerts_") as tmp:
        results = [run(n, args.prv, args.repeats, Path(tmp)) for n in args.alerts]
    print(
        json.dumps(
            {
                "benchmark": "visit alert file",
                "codec": CODEC,
                "budget_s": BUDGET_S,
                "runs": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
