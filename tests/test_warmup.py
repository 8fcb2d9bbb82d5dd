"""The install's warm-up compiles every kernel the stages call, for the types they call it with."""

from __future__ import annotations

import importlib

import numpy as np
from numba.core import event
from numba.core.registry import CPUDispatcher

from association.catalogue import Catalogue, CatalogueConfig
from association.columns import DIASOURCE_DTYPE, OBJECT_DTYPE
from association.matching.assign import position_cost
from association.matching.movers import mover_candidates, mover_matches
from association.matching.zoneindex import ZoneIndex
from association.stages.update import choose_objects
from association.stages.visit import Candidates
from association.storage import VisitRecord, open_storage, warm_up_reads
from association.warmup import PACKAGE, kernel_modules, warm_up_all
from tests.databases import PARAMS


def signatures() -> dict[str, set]:
    """Every kernel of the package and the types it is compiled (or loaded) for, so far."""
    out = {}
    for path in kernel_modules():
        name = ".".join(("association", *path.relative_to(PACKAGE).with_suffix("").parts))
        for attr, obj in vars(importlib.import_module(name)).items():
            if isinstance(obj, CPUDispatcher):
                out[f"{name}.{attr}"] = set(obj.signatures)
    return out


def test_the_stages_compile_nothing_after_the_warm_up(tmp_path):
    warm_up_all()  # loads the install's cache (compiles only if it is stale)
    warm_up_reads()
    rng = np.random.default_rng(0)
    n = 50
    src = np.zeros(n, DIASOURCE_DTYPE)
    src["diaSourceId"] = np.arange(1, n + 1)
    src["ra"], src["dec"] = 10 + rng.uniform(0, 1e-3, n), rng.uniform(0, 1e-3, n)
    src["raErr"] = src["decErr"] = np.float32(1e-5)
    src["psfFlux"], src["psfFluxErr"], src["visit"] = 100.0, 5.0, 7
    obj = np.zeros(n, OBJECT_DTYPE)
    obj["diaObjectId"] = 1000 + np.arange(n)
    obj["ra"], obj["dec"] = src["ra"] + 1e-5, src["dec"]
    obj["raErr"] = obj["decErr"] = np.float32(2e-5)
    obj["nDiaSources"] = 1
    obj["fine"] = src["fine"] = np.arange(n) + (1 << 30)
    preds = rng.uniform(0, 1e-3, (2, 5))
    warm = signatures()
    with event.install_recorder("numba:compile") as rec:
        # crossmatch, moving, update as the stages call them
        index = ZoneIndex.build(obj["ra"], obj["dec"], obj["diaObjectId"], copy=False)
        s, o, d = index.pairs(src["ra"], src["dec"], 30.0)
        cost = position_cost(
            s, o, src["ra"], src["dec"], obj["ra"], obj["dec"],
            src["raErr"], src["decErr"], obj["raErr"], obj["decErr"],
        )  # fmt: skip
        cand = Candidates(src["diaSourceId"][s], obj["diaObjectId"][o], cost, d, o % 2 == 0)
        choose_objects(cand, src["diaSourceId"][:2], "one_to_one")
        a = np.full(5, 2.0, np.float32)
        p, q, c = mover_candidates(
            10 + preds[0], preds[1], a, a, a, src["ra"], src["dec"], src["raErr"], src["decErr"]
        )
        mover_matches(p, q, c, np.full(n, np.inf))
        # the catalogue's update
        cat = Catalogue(CatalogueConfig(), 2 * (PARAMS.fine_order - PARAMS.chunk_order))
        chunk = int(obj["fine"][0]) >> cat.chunk_shift
        cat.put(chunk, obj, np.empty(0, DIASOURCE_DTYPE))
        matched = src[:10].copy()
        matched["diaObjectId"] = obj["diaObjectId"][:10]
        with cat.begin(7) as txn:
            txn.associate(matched)
            txn.create(src[10:])
        # the database's reads and the Store
        with open_storage(None, tmp_path, PARAMS, create=True) as storage:
            storage.bulk_load_objects(obj)
            with storage.reading():
                lo, hi = np.array([0]), np.array([1 << 40])
                storage.count_objects(lo, hi, 10)
                storage.load_objects_ranges(lo, hi)
                storage.load_object_columns(lo, hi, ["ra", "raErr", "isVariable"])
                storage.load_recent_diasources(0, 1 << 40, 10)
            record = VisitRecord(7, 60000.0, 10.0, 0.0, "r", n, 0, 0, 0)
            storage.store_visit(record, src, obj)
    compiled = [ev.data["dispatcher"] for ev in rec.buffer if ev.is_start]
    assert not compiled, compiled
    # nor loaded from numba's cache for types the warm-up did not call it with
    new = {k: v - warm.get(k, set()) for k, v in signatures().items()}
    assert not {k: v for k, v in new.items() if v}
