"""Runtime benchmark: stage round trip, idle CPU, and 100 executions in flight.

Runs real ``mpiexec -n 3`` jobs (master + 2 Slices) of a pipeline of ten
empty stages, in active and in passive waiting. The reference, measured in
the same run, is a bare mpi4py round trip (master sends to both Slices and
waits for both answers) in the same kind of job.

Prints one JSON document. Usage: ``python benchmarks/bench_runtime.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framework.mpiexec import mpiexec_path, run_command  # noqa: E402
from framework.stage import Stage  # noqa: E402

N_STAGES = 10
N_SEQUENTIAL = 100
N_LOAD = 100
VISIT = {"mjd": 60218.0, "ra": 10.0, "dec": -20.0, "filter": "r"}


class Empty(Stage):
    """Does nothing on every hook."""


def pingpong(n: int = 2000) -> None:
    """Bare mpi4py: master sends a small message to each Slice and waits for both."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    times = []
    for _ in range(n):
        if rank == 0:
            t0 = time.perf_counter()
            for r in range(1, size):
                comm.send(("work", 1), dest=r)
            for r in range(1, size):
                comm.recv(source=r)
            times.append(time.perf_counter() - t0)
        else:
            comm.recv(source=0)
            comm.send(("done", rank), dest=0)
    if rank == 0:
        print(json.dumps({"median_ms": 1e3 * statistics.median(times)}))


def _config(mode: str, max_in_flight: int) -> str:
    lines = [
        "[pipeline]",
        'name = "bench"',
        'start = "telescope.next_visit"',
        f"max_in_flight = {max_in_flight}",
        "[runtime]",
        f'waiting = "{mode}"',
        'endpoint = "tcp://127.0.0.1:0"',
        "status_interval = 0.5",
    ]
    for i in range(N_STAGES):
        lines += ["[[stages]]", f'name = "s{i}"', f'class = "{Path(__file__).resolve()}:Empty"']
    return "\n".join(lines) + "\n"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(mode: str, tmp: Path) -> dict:
    """Round trips of one waiting mode; idle CPU per rank in it."""
    from events.client import Injector, Subscriber
    from events.envelope import Event

    cfg = tmp / f"{mode}.toml"
    cfg.write_text(_config(mode, N_LOAD + 10))
    run = tmp / f"run-{mode}"
    proc = subprocess.Popen(
        run_command(3, cfg, run),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not (run / "endpoint.json").exists():
            time.sleep(0.05)
        info = json.loads((run / "endpoint.json").read_text())
        sub = Subscriber(info["publish"], ["bench.execution_done"])  # the default outcome name
        inj = Injector(info["address"])
        time.sleep(0.5)  # let the subscription settle
        stage_ms = []
        for fov in range(1, N_SEQUENTIAL + 1):
            inj.send(Event.new("telescope.next_visit", fov, VISIT))
            ev = sub.recv(timeout=30)
            timings = ev.body["timings"]
            stage_ms += [1e3 * timings[f"s{i}"] for i in range(N_STAGES)]
        # 100 executions in flight at once
        t0 = time.perf_counter()
        inj.send_many([Event.new("telescope.next_visit", 1000 + i, VISIT) for i in range(N_LOAD)])
        for _ in range(N_LOAD):
            sub.recv(timeout=60)
        wall = time.perf_counter() - t0
        out = {
            "stage_round_trip_median_ms": statistics.median(stage_ms),
            "stage_round_trip_p95_ms": sorted(stage_ms)[int(0.95 * len(stage_ms))],
            "load_100_in_flight_per_stage_ms": 1e3 * wall / (N_LOAD * N_STAGES),
        }
        out["load_slowdown"] = (
            out["load_100_in_flight_per_stage_ms"] / out["stage_round_trip_median_ms"]
        )
        if mode == "passive":
            time.sleep(1.0)
            status = json.loads((run / "status.json").read_text())
            pids = {r: b["pid"] for r, b in status["ranks"].items()}
            c0 = {r: _cpu_seconds(p) for r, p in pids.items()}
            t0 = time.time()
            time.sleep(5.0)
            dt = time.time() - t0
            out["idle_cpu_percent_per_rank"] = {
                r: round(100 * (_cpu_seconds(p) - c0[r]) / dt, 2) for r, p in pids.items()
            }
        inj.send(Event.new("control.shutdown", None, {}))
        inj.close()
        sub.close()
        proc.wait(60)
        return out
    finally:
        if proc.poll() is None:
            proc.kill()


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ref = subprocess.run(
            [mpiexec_path(), "-n", "3", sys.executable, __file__, "--pingpong"],
            capture_output=True,
            text=True,
            check=True,
        )
        reference = json.loads(ref.stdout.strip().splitlines()[-1])
        result = {
            "benchmark": "runtime",
            "ranks": 3,
            "stages": N_STAGES,
            "reference_mpi4py_round_trip_median_ms": reference["median_ms"],
            "active": run_mode("active", tmp),
            "passive": run_mode("passive", tmp),
        }
        for mode in ("active", "passive"):
            r = result[mode]
            r["ratio_to_reference"] = r["stage_round_trip_median_ms"] / reference["median_ms"]
        result["targets"] = {
            "active_median_le_1ms": result["active"]["stage_round_trip_median_ms"] <= 1.0,
            "passive_median_le_5ms": result["passive"]["stage_round_trip_median_ms"] <= 5.0,
            "idle_cpu_le_2pct": all(
                v <= 2.0 for v in result["passive"]["idle_cpu_percent_per_rank"].values()
            ),
            "load_slowdown_le_2x": all(
                result[m]["load_slowdown"] <= 2.0 for m in ("active", "passive")
            ),
        }
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    if "--pingpong" in sys.argv:
        pingpong()
    else:
        main()
