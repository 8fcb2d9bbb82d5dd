"""Cross-match benchmark: the zone index against astropy and scipy's cKDTree.

2,000,000 Objects uniform in a 1.75 deg field (in random order), 20,000
DIASources (half within ~0.3" of an Object, half anywhere in the field),
radius 1". Two fields: a generic one and one across RA 0/360. Prints JSON
with the medians (ms), the ratios and whether the targets are met.

    .venv/bin/python benchmarks/bench_crossmatch.py [--repeats N] [--fields F,..] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import astropy.units as u
import numba
import numpy as np
from astropy.coordinates import SkyCoord, search_around_sky
from scipy.spatial import cKDTree

from association.matching.zoneindex import ZoneIndex

N_OBJECTS = 2_000_000
N_SOURCES = 20_000
FIELD_RADIUS_DEG = 1.75
RADIUS_ARCSEC = 1.0
FIELDS = {"generic": (150.0, 2.0), "wrap": (0.0, -30.0)}
TARGETS = {"vs_astropy": 50.0, "vs_ckdtree": 5.0, "query_ms": 10.0}


def offset(ra, dec, dist_deg, bearing_deg):
    """Points ``dist_deg`` from (ra, dec) towards ``bearing_deg`` (east of north)."""
    d, a = np.radians(dec), np.radians(ra)
    r, t = np.radians(dist_deg), np.radians(bearing_deg)
    dec2 = np.arcsin(np.sin(d) * np.cos(r) + np.cos(d) * np.sin(r) * np.cos(t))
    ra2 = a + np.arctan2(np.sin(t) * np.sin(r) * np.cos(d), np.cos(r) - np.sin(d) * np.sin(dec2))
    return np.degrees(ra2) % 360.0, np.degrees(dec2)


def make_field(ra0, dec0, rng):
    """Objects uniform over the field's disc; sources half near Objects, half random."""

    def uniform(n):
        dist = np.degrees(np.arccos(1 - rng.random(n) * (1 - np.cos(np.radians(FIELD_RADIUS_DEG)))))
        return offset(ra0, dec0, dist, rng.uniform(0, 360, n))

    ra, dec = uniform(N_OBJECTS)
    half = N_SOURCES // 2
    near = rng.integers(0, N_OBJECTS, half)
    scatter = np.abs(rng.normal(0, 0.3, half)) / 3600
    nra, ndec = offset(ra[near], dec[near], scatter, rng.uniform(0, 360, half))
    rra, rdec = uniform(N_SOURCES - half)
    ids = rng.permutation(N_OBJECTS).astype(np.int64) + 1
    return ra, dec, ids, np.concatenate([nra, rra]), np.concatenate([ndec, rdec])


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times), out


def unit(ra, dec):
    a, d = np.radians(ra), np.radians(dec)
    cd = np.cos(d)
    return np.column_stack([cd * np.cos(a), cd * np.sin(a), np.sin(d)])


def ours(ra, dec, ids, qra, qdec):
    # like cKDTree (copy_data=False), keep the caller's columns without copying
    index = ZoneIndex.build(ra, dec, ids, copy=False)
    q, o, _ = index.pairs(qra, qdec, RADIUS_ARCSEC)
    return q, o


def astropy_pairs(ra, dec, qra, qdec):
    # fresh SkyCoords each time: astropy caches its KD-tree on them
    q, o, _, _ = search_around_sky(
        SkyCoord(qra * u.deg, qdec * u.deg), SkyCoord(ra * u.deg, dec * u.deg),
        RADIUS_ARCSEC * u.arcsec,
    )  # fmt: skip
    return q, o


def ckdtree_pairs(ra, dec, qra, qdec):
    tree = cKDTree(unit(ra, dec), balanced_tree=False, compact_nodes=False)
    chord = 2 * np.sin(np.radians(RADIUS_ARCSEC / 3600) / 2)
    hits = tree.query_ball_point(unit(qra, qdec), chord, workers=-1)
    counts = np.fromiter((len(h) for h in hits), np.int64, len(hits))
    q = np.repeat(np.arange(len(hits)), counts)
    o = np.fromiter((j for h in hits for j in h), np.int64, int(counts.sum()))
    return q, o


def pair_set(q, o, qra, qdec, ra, dec):
    """Pairs as a set, minus those within 1e-9 (relative) of the radius."""
    qu, ou = unit(qra[q], qdec[q]), unit(ra[o], dec[o])
    sep = np.degrees(np.arctan2(np.linalg.norm(np.cross(qu, ou), axis=1), (qu * ou).sum(1)))
    keep = np.abs(sep * 3600 - RADIUS_ARCSEC) > 1e-9 * RADIUS_ARCSEC
    return set(zip(q[keep].tolist(), o[keep].tolist(), strict=True)), int((~keep).sum())


def run_field(name, repeats, rng):
    ra, dec, ids, qra, qdec = make_field(*FIELDS[name], rng)
    ours(ra, dec, ids, qra, qdec)  # warm-up: numba compile or cache load
    index = ZoneIndex.build(ra, dec, ids, copy=False)
    index.nearest(qra, qdec, RADIUS_ARCSEC)

    t_both, (q, o) = median_ms(lambda: ours(ra, dec, ids, qra, qdec), repeats)
    t_build, index = median_ms(lambda: ZoneIndex.build(ra, dec, ids, copy=False), repeats)
    t_build_copy, _ = median_ms(lambda: ZoneIndex.build(ra, dec, ids), repeats)
    t_pairs, _ = median_ms(lambda: index.pairs(qra, qdec, RADIUS_ARCSEC), repeats)
    t_near, _ = median_ms(lambda: index.nearest(qra, qdec, RADIUS_ARCSEC), repeats)
    t_astropy, (aq, ao) = median_ms(lambda: astropy_pairs(ra, dec, qra, qdec), 3)
    t_kd, (kq, ko) = median_ms(lambda: ckdtree_pairs(ra, dec, qra, qdec), repeats)

    mine, at_edge = pair_set(q, o, qra, qdec, ra, dec)
    assert mine == pair_set(aq, ao, qra, qdec, ra, dec)[0], "astropy pairs differ"
    assert mine == pair_set(kq, ko, qra, qdec, ra, dec)[0], "cKDTree pairs differ"
    ratios = {"vs_astropy": t_astropy / t_both, "vs_ckdtree": t_kd / t_both}
    return {
        "field": name,
        "centre_deg": FIELDS[name],
        "n_pairs": int(q.size),
        "pairs_at_radius_ignored": at_edge,
        "ms": {
            "ours_build_plus_pairs": round(t_both, 2),
            "ours_build": round(t_build, 2),
            "ours_build_with_copy": round(t_build_copy, 2),
            "ours_pairs": round(t_pairs, 2),
            "ours_nearest": round(t_near, 2),
            "astropy_search_around_sky": round(t_astropy, 1),
            "ckdtree_build_plus_query": round(t_kd, 1),
        },
        "ratios": {k: round(v, 1) for k, v in ratios.items()},
        "targets_met": {
            "build_plus_query_vs_astropy>=50x": ratios["vs_astropy"] >= TARGETS["vs_astropy"],
            "build_plus_query_vs_ckdtree>=5x": ratios["vs_ckdtree"] >= TARGETS["vs_ckdtree"],
            "query_alone<=10ms": max(t_pairs, t_near) <= TARGETS["query_ms"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fields", default="generic,wrap")
    parser.add_argument("--threads", type=int, help="numba threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    rng = np.random.default_rng(20240601)
    results = [run_field(f, max(5, args.repeats), rng) for f in args.fields.split(",")]
    report = {
        "n_objects": N_OBJECTS,
        "n_sources": N_SOURCES,
        "radius_arcsec": RADIUS_ARCSEC,
        "numba_threads": numba.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
