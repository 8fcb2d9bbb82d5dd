"""Benchmark: the five OpSim nights we carry, replayed into one catalogue, night by night.

Simulates nights 60217.5 ... 60221.5 of ``association/data/opsim_5nights.db`` as
one survey (``nightpipe simulate --after``: the same Objects, movers moved on,
transients faded or gone, the sky new to each night added to the catalogue),
replays them in order into one run directory and one SQLite database at full
speed (3 ranks), and prints, per night, the p50 and p95 of each visit's load
and store stage times and of its processing latency (from the journal), with
the catalogue's size and the night's quality. The reference in the same run is
night 1: per-visit load and store p95 on night 5 must be at most
`LIMIT` times night 1's. At full speed the store stage includes each visit's
wait behind the visits decided before it (one writer), so the database write
alone (the transaction) is given too; the benchmark prints the three ratios and
whether they hold.

The full-density survey (``--density 10000``, the default, as the README's
full night) takes hours and tens of GB; ``--density 500 --visits 40`` checks
the benchmark in minutes. Prints the table on stderr and JSON on stdout.

``python benchmarks/bench_survey.py [--density D] [--visits N] [--ranks R] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NIGHTS = (60217.5, 60218.5, 60219.5, 60220.5, 60221.5)
"""The nights of the bundled OpSim file."""
LIMIT = 1.25
"""Night 5's per-visit load, store and write p95, at most this times night 1's."""
FIGURES = ("load", "store", "write", "processing")
RATIOS = ("load", "store", "write")
"""Figures whose night 5 / night 1 p95 must be within `LIMIT`: ``store`` is the stage
(the write and its wait behind earlier visits), ``write`` the transaction alone."""


def simulate_survey(base: Path, density: float, variable_fraction: float, visits: int | None):
    """The five nights as one survey, each archive continuing the one before."""
    from association.nights.opsim import BUNDLED_DB
    from association.nights.simulate import SimConfig, simulate

    archives: list[Path] = []
    config = SimConfig(density_static_per_deg2=density, variable_fraction=variable_fraction)
    for i, night in enumerate(NIGHTS):
        out = base / f"night{i + 1}"
        t0 = time.time()
        after = archives[-1] if archives else None
        m = simulate(
            BUNDLED_DB,
            out,
            night,
            None if after else config,
            max_visits=visits,
            overwrite=True,
            after=after,
        )
        c = m["counts"]
        print(
            f"bench_survey: simulated night {night:g}: {c['visits']} visits, "
            f"{c['diasources']} DIASources, {c['objects_preloaded']} Objects of new sky "
            f"({time.time() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        archives.append(out)
    return archives


def night_table(nights: list[dict[str, Any]]) -> list[str]:
    """The per-night table, as text lines."""
    head = f"{'night':>8} {'visits':>6} {'failed':>6}"
    for name in FIGURES:
        head += f" {name + ' p50':>14} {name + ' p95':>14}"
    head += f" {'Objects in the database':>24}"
    lines = [head]
    for n in nights:
        row = f"{n['night_mjd']:>8g} {n['visits']:>6} {n['failed']:>6}"
        for name in FIGURES:
            for q in ("p50", "p95"):
                v = n[name][q]
                row += f" {'-' if v is None else f'{v:.3f} s':>14}"
        size = n["catalogue_objects"]
        row += f" {'-' if size is None else f'{size[0]:,} to {size[1]:,}':>24}"
        lines.append(row)
    return lines


def ratios(nights: list[dict[str, Any]]) -> dict[str, Any]:
    """Night 5's per-visit `RATIOS` p95 over night 1's, and whether each is within LIMIT."""
    first, last = nights[0], nights[-1]
    out: dict[str, Any] = {"limit": LIMIT, "nights": [first["night_mjd"], last["night_mjd"]]}
    for name in RATIOS:
        a, b = first[name]["p95"], last[name]["p95"]
        ratio = b / a if a and b is not None else None
        out[name] = {"first_p95": a, "last_p95": b, "ratio": ratio}
        out[name]["holds"] = ratio is not None and ratio <= LIMIT
    out["holds"] = all(out[name]["holds"] for name in RATIOS)
    return out


def main() -> None:
    from association.nights.replay import ReplayOptions
    from association.nights.report import build_report, gate
    from association.nights.sequence import replay_nights

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--density", type=float, default=10000.0, help="Objects per square degree")
    p.add_argument("--variable-fraction", type=float, default=0.14)
    p.add_argument("--visits", type=int, help="at most this many visits a night (for a check)")
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--dir", default="bench-survey", help="where the archives and the run go")
    args = p.parse_args()

    base = Path(args.dir).resolve()
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    t0 = time.time()
    archives = simulate_survey(base, args.density, args.variable_fraction, args.visits)
    simulated = time.time() - t0
    run = base / "run"
    opts = ReplayOptions(archive=archives[0], run_dir=run, ranks=args.ranks)
    t1 = time.time()
    summary = replay_nights(opts, archives)
    replayed = time.time() - t1
    report = build_report(run)
    nights = report["nights"]
    for line in night_table(nights):
        print(line, file=sys.stderr)
    result = ratios(nights)
    for name in RATIOS:
        r = result[name]
        verdict = "holds" if r["holds"] else "does NOT hold"
        print(
            f"bench_survey: night 5 / night 1 per-visit {name} p95: "
            f"{r['ratio'] if r['ratio'] is None else round(r['ratio'], 3)} "
            f"(limit {LIMIT}): {verdict}",
            file=sys.stderr,
        )
    print(
        json.dumps(
            {
                "benchmark": "survey",
                "density_per_deg2": args.density,
                "variable_fraction": args.variable_fraction,
                "visits_per_night_cap": args.visits,
                "ranks": args.ranks,
                "load_average": os.getloadavg(),
                "simulate_seconds": simulated,
                "replay_seconds": replayed,
                "visits": summary["visits"],
                "failed": summary["failed"],
                "nights": [
                    {
                        "night_mjd": n["night_mjd"],
                        "visits": n["visits"],
                        "failed": n["failed"],
                        **{k: {q: n[k][q] for q in ("p50", "p95")} for k in FIGURES},
                        "catalogue_objects": n["catalogue_objects"],
                        "quality": None
                        if n["quality"] is None
                        else {
                            "completeness": n["quality"]["completeness"]["all"]["fraction"],
                            "purity": n["quality"]["purity"]["fraction"],
                            "mover_recovery": n["quality"]["movers"]["recovery"]["fraction"],
                        },
                    }
                    for n in nights
                ],
                "night5_over_night1": result,
                "quality_gate": gate(report),
                "run_dir": str(run),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
