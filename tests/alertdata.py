"""Small visits for the alert tests: Objects with and without history, moving-object matches."""

from __future__ import annotations

import numpy as np

from association.alerts.rubin import MovingMatches
from association.columns import DIASOURCE_DTYPE, NBANDS, OBJECT_DTYPE
from association.inputs.readers import PREDICTION_DTYPE

VISIT = 4242


def make_visit(
    n: int = 60, n_moving: int = 6, seed: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, MovingMatches]:
    """(sources, objects, recent, moving) of one visit.

    Of the ``n`` sources, ``n_moving`` are moving-object matches; of the rest,
    a few have no Object row, a few have an Object with no history, the
    others 1-4 earlier DIASources. Some optional values are NaN.
    """
    rng = np.random.default_rng(seed)
    src = np.zeros(n, DIASOURCE_DTYPE)
    src["diaSourceId"] = VISIT * 1_000_000 + np.arange(1, n + 1)
    src["visit"] = VISIT
    src["ra"] = rng.uniform(0, 360, n)
    src["dec"] = rng.uniform(-89, 89, n)
    src["raErr"] = rng.uniform(1e-6, 1e-5, n)
    src["decErr"] = rng.uniform(1e-6, 1e-5, n)
    src["raErr"][::7] = np.nan
    src["midpointMjdTai"] = 60500.25
    src["band"] = rng.integers(0, NBANDS, n)
    src["psfFlux"] = rng.normal(2000, 500, n)
    src["psfFluxErr"] = rng.uniform(20, 100, n)
    src["snr"] = src["psfFlux"] / src["psfFluxErr"]
    src["snr"][::5] = np.nan

    moving = np.arange(n) < n_moving
    objs = ~moving
    obj_ids = np.where(objs, 10_000 + np.arange(n) * 3, 0)
    src["diaObjectId"] = obj_ids
    src["ssObjectId"] = np.where(moving, 900 + np.arange(n), 0)

    # Objects: all but every 11th of the object sources (those get a null diaObject).
    with_row = objs & (np.arange(n) % 11 != 10)
    objects = np.zeros(int(with_row.sum()), OBJECT_DTYPE)
    objects["diaObjectId"] = obj_ids[with_row]
    objects["ra"], objects["dec"] = src["ra"][with_row], src["dec"][with_row]
    history = rng.integers(0, 5, n)
    history[np.arange(n) % 9 == 0] = 0
    objects["nDiaSources"] = history[with_row] + 1
    objects["firstMjd"] = 60400.0 + rng.uniform(0, 50, len(objects))
    objects["lastMjd"] = 60500.25
    ndata = rng.integers(0, 4, (len(objects), NBANDS))
    objects["psfFluxNdata"] = ndata
    objects["psfFluxMean"] = np.where(ndata > 0, rng.normal(2000, 300, ndata.shape), np.nan)
    objects["psfFluxM2"] = np.where(ndata > 1, rng.uniform(0, 1e5, ndata.shape), 0.0)
    objects["isVariable"] = rng.random(len(objects)) < 0.2

    counts = np.where(objs, history, 0)
    recent = np.zeros(int(counts.sum()), DIASOURCE_DTYPE)
    owner = np.repeat(np.arange(n), counts)
    recent["diaSourceId"] = 7_000_000 + np.arange(len(recent))
    recent["visit"] = VISIT - 1 - np.arange(len(recent)) % 5
    recent["diaObjectId"] = obj_ids[owner]
    recent["ra"], recent["dec"] = src["ra"][owner], src["dec"][owner]
    recent["raErr"] = np.nan
    recent["decErr"] = 2e-6
    recent["midpointMjdTai"] = 60400.0 + np.arange(len(recent)) * 0.01
    recent["band"] = rng.integers(0, NBANDS, len(recent))
    recent["psfFlux"] = rng.normal(1800, 300, len(recent))
    recent["psfFluxErr"] = 50.0
    recent["snr"] = np.nan
    recent = recent[np.lexsort((recent["midpointMjdTai"], recent["diaObjectId"]))]

    pred = np.zeros(n_moving, PREDICTION_DTYPE)
    pred["ssObjectId"] = src["ssObjectId"][:n_moving]
    pred["ra"] = src["ra"][:n_moving] + rng.normal(0, 1e-4, n_moving)
    pred["dec"] = src["dec"][:n_moving] + rng.normal(0, 1e-4, n_moving)
    pred["semiMajorAxis"], pred["semiMinorAxis"] = 1.0, 0.5
    pred["predictedMag"] = rng.uniform(18, 23, n_moving)
    pred["predictedMag"][::2] = np.nan
    pred["mjd"] = 60500.25
    # Matches given in another order than the sources, to exercise the lookup.
    order = rng.permutation(n_moving)
    matches = MovingMatches(src["diaSourceId"][:n_moving][order], pred[order])
    perm = rng.permutation(n)
    return src[perm], objects, recent, matches
