"""Per-visit benchmark of the association pipeline under mpiexec (master + 2 Slices, SQLite).

2,000,000 Objects in one 1.75 deg field. The telescope event loads the field
(cold the first time, warm on revisits); then the detection and predictions
events come and we time from ``detection.diasources_ready`` received to
``association.alerts_ready`` published (both journal times), for 10,000 and
40,000 DIASources. Reference in the same run: astropy's ``match_to_catalog_sky``
doing only the nearest-neighbour match of the same sources to the same Objects.

Prints JSON. Usage: ``python benchmarks/bench_visit.py [--objects N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from association.columns import DIASOURCE_DTYPE, OBJECT_DTYPE  # noqa: E402
from association.inputs.readers import PREDICTION_DTYPE, write_table  # noqa: E402
from association.sky.partition import Partition  # noqa: E402
from association.storage import FrozenParameters, open_storage  # noqa: E402
from events.client import Injector  # noqa: E402
from events.envelope import Event  # noqa: E402
from events.journal import Journal  # noqa: E402
from framework.mpiexec import run_command  # noqa: E402

RA0, DEC0, RADIUS = 150.0, 2.0, 1.75


def disc(rng: np.random.Generator, n: int, radius: float = RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points in the field (small-angle)."""
    r = radius * np.sqrt(rng.random(n))
    phi = rng.uniform(0, 2 * np.pi, n)
    dec = DEC0 + r * np.sin(phi)
    ra = RA0 + r * np.cos(phi) / np.cos(np.radians(dec))
    return ra, dec


def make_objects(n: int, part: Partition) -> np.ndarray:
    rng = np.random.default_rng(1)
    obj = np.zeros(n, OBJECT_DTYPE)
    obj["diaObjectId"] = np.arange(1, n + 1)
    obj["ra"], obj["dec"] = disc(rng, n)
    obj["fine"] = part.fine_index(obj["ra"], obj["dec"])
    obj["nDiaSources"] = 3
    obj["isVariable"] = rng.random(n) < 0.5
    obj["firstMjd"], obj["lastMjd"] = 60000.0, 60100.0
    obj["psfFluxNdata"][:, 2] = 3
    obj["psfFluxMean"][:, 2] = 1000.0
    return obj


def make_sources(objects: np.ndarray, n: int, visit: int, part: Partition) -> np.ndarray:
    """Half near known Objects (0.1 arcsec scatter), half new."""
    rng = np.random.default_rng(visit)
    src = np.zeros(n, DIASOURCE_DTYPE)
    src["diaSourceId"] = (visit << 20) + np.arange(n) + (1 << 40)
    pick = rng.choice(len(objects), n // 2, replace=False)
    src["ra"][: n // 2] = objects["ra"][pick] + rng.normal(0, 0.1 / 3600, n // 2)
    src["dec"][: n // 2] = objects["dec"][pick] + rng.normal(0, 0.1 / 3600, n // 2)
    src["ra"][n // 2 :], src["dec"][n // 2 :] = disc(rng, n - n // 2, RADIUS - 0.01)
    src["midpointMjdTai"] = 60200.0 + visit * 0.001
    src["band"] = 2
    src["psfFlux"] = rng.normal(1000, 50, n)
    src["psfFluxErr"] = 20.0
    src["raErr"] = src["decErr"] = np.nan
    src["snr"] = 50.0
    src["fine"] = part.fine_index(src["ra"], src["dec"])  # a supplied fine must be right
    return src


def make_predictions(src: np.ndarray, n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    pick = rng.choice(np.arange(len(src) // 2, len(src)), n, replace=False)
    p = np.zeros(n, PREDICTION_DTYPE)
    p["ssObjectId"] = np.arange(1, n + 1)
    p["ra"], p["dec"] = src["ra"][pick], src["dec"][pick]
    p["semiMajorAxis"], p["semiMinorAxis"], p["positionAngle"] = 1.0, 0.5, 30.0
    p["predictedMag"], p["mjd"] = 21.0, src["midpointMjdTai"][0]
    return p


def received(run: Path, type: str, fov: int) -> float | None:
    with Journal(run / "journal.sqlite") as j:
        rows = j.entries(type=type, fov_id=fov)
    return rows[0].received if rows else None


def visit_done(run: Path, fov: int) -> dict | None:
    with Journal(run / "journal.sqlite") as j:
        rows = j.entries(type="association.visit_done", fov_id=fov)
    return rows[0].event.body if rows else None


def wait_for(fn, timeout: float = 600.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = fn()
        if got is not None:
            return got
        time.sleep(0.01)
    raise TimeoutError


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def astropy_reference(objects: np.ndarray, src: np.ndarray) -> float:
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    t0 = time.perf_counter()
    cat = SkyCoord(objects["ra"] * u.deg, objects["dec"] * u.deg)
    idx, d2d, _ = SkyCoord(src["ra"] * u.deg, src["dec"] * u.deg).match_to_catalog_sky(cat)
    _ = idx[d2d < 1 * u.arcsec]
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=2_000_000)
    ap.add_argument("--visits", type=int, default=5)
    args = ap.parse_args()
    part = Partition()
    out: dict = {"benchmark": "visit", "objects": args.objects, "slices": 2, "db": "sqlite"}
    with tempfile.TemporaryDirectory() as d:
        run = Path(d) / "run"
        run.mkdir()
        objects = make_objects(args.objects, part)
        frozen = FrozenParameters(part.chunk_order, part.fine_order)
        storage = open_storage(None, run, frozen, create=True)
        t0 = time.perf_counter()
        storage.bulk_load_objects(objects)
        out["preload_seconds"] = time.perf_counter() - t0
        storage.close()
        proc = subprocess.Popen(
            run_command(3, "association", run),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: (run / "endpoint.json").exists() or None, 120)
            info = json.loads((run / "endpoint.json").read_text())
            inj = Injector(info["address"], timeout=60)
            latencies: dict[int, list[float]] = {10_000: [], 40_000: []}
            loads, stages = [], []
            fov = 0
            for n, visits in ((10_000, args.visits), (40_000, 3)):
                for _ in range(visits):
                    fov += 1
                    src = make_sources(objects, n, fov, part)
                    write_table(run / f"v{fov}.parquet", src)
                    write_table(run / f"p{fov}.parquet", make_predictions(src, 100))
                    nv = {"mjd": 60200.0, "ra": RA0, "dec": DEC0, "filter": "r", "radius": RADIUS}
                    inj.send(Event.new("telescope.next_visit", fov, nv))
                    # wait until the load is done: the execution then waits for detection (sources)
                    wait_for(
                        lambda f=fov: (
                            True
                            if any(
                                e["key"] == f and e["stage"] == "sources"
                                for e in json.loads((run / "status.json").read_text())["executions"]
                            )
                            else None
                        ),
                        600,
                    )
                    inj.send(
                        Event.new(
                            "nightmops.predictions_ready",
                            fov,
                            {"paths": [str(run / f"p{fov}.parquet")]},
                        )
                    )
                    inj.send(
                        Event.new(
                            "detection.diasources_ready",
                            fov,
                            {"paths": [str(run / f"v{fov}.parquet")], "match_radius": 1.0},
                        )
                    )
                    body = wait_for(lambda f=fov: visit_done(run, f))
                    det = received(run, "detection.diasources_ready", fov)
                    ready = received(run, "association.alerts_ready", fov)
                    latencies[n].append(ready - det)
                    loads.append(body["timings"]["load"])
                    stages.append(body["timings"])
            status = json.loads((run / "status.json").read_text())
            out["rss_mb_per_rank"] = {
                r: round(rss_mb(b["pid"]), 1) for r, b in status["ranks"].items()
            }
            slices = [b for r, b in status["ranks"].items() if r != "0"]
            out["catalogue_objects_per_slice"] = [b.get("catalogue_objects") for b in slices]
            out["catalogue_mb_per_slice"] = [round(b.get("catalogue_mb", 0), 1) for b in slices]
            out["bytes_per_object_excluding_recent"] = [
                round(b.get("bytes_per_object", 0), 1) for b in slices
            ]
            inj.send(Event.new("control.shutdown", None, {}))
            inj.close()
            proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
        ref = [
            astropy_reference(objects, make_sources(objects, 10_000, 99, part)) for _ in range(3)
        ]
    out["latency_10k_median_s"] = statistics.median(latencies[10_000])
    out["latency_10k_all_s"] = [round(x, 3) for x in latencies[10_000]]
    out["latency_40k_median_s"] = statistics.median(latencies[40_000])
    out["load_cold_s"] = loads[0]
    out["load_warm_median_s"] = statistics.median(loads[1:])
    out["stage_medians_10k_s"] = {
        k: round(statistics.median(s[k] for s in stages[1 : args.visits]), 4) for k in stages[0]
    }
    out["reference_astropy_match_only_10k_s"] = statistics.median(ref)
    out["ratio_reference_to_pipeline_10k"] = (
        out["reference_astropy_match_only_10k_s"] / out["latency_10k_median_s"]
    )
    out["targets"] = {
        "latency_10k_le_1s": out["latency_10k_median_s"] <= 1.0,
        "latency_40k_le_3s": out["latency_40k_median_s"] <= 3.0,
        "load_cold_le_5s": out["load_cold_s"] <= 5.0,
        "load_warm_le_0.1s": out["load_warm_median_s"] <= 0.1,
        "memory_le_150_bytes_per_object": all(
            b <= 150 for b in out["bytes_per_object_excluding_recent"]
        ),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
