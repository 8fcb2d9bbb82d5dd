"""Association quality against the truth, on hand-made cases with known answers."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from association.nights.quality import quality, summary_line

PRELOADED = np.array([100, 200, 300])

# diaSourceId, visit, kind, true diaObjectId, true ssObjectId, transientId, predicted,
# then what the pipeline stored: diaObjectId, ssObjectId (None: not in the database)
ROWS = [
    (1, 1, "variable", 100, 0, 0, False, 100, 0),  # right link
    (2, 1, "variable", 100, 0, 0, False, 200, 0),  # wrong link
    (3, 1, "static", 300, 0, 0, False, 300, 0),  # right link
    (4, 1, "mover", 0, 7, 0, True, 0, 7),  # recovered
    (5, 1, "mover", 0, 8, 0, True, 5, 0),  # predicted, yet a new Object: false new
    (6, 1, "mover", 0, 9, 0, False, 6, 0),  # unpredicted: a new Object is expected
    (7, 1, "spurious", 0, 0, 0, False, 7, 0),  # new
    (8, 1, "transient", 0, 0, 1, False, 8, 0),  # first detection: new
    (9, 2, "transient", 0, 0, 1, False, 8, 0),  # linked to the first
    (10, 3, "transient", 0, 0, 1, False, 10, 0),  # not linked: new
    (11, 2, "spurious", 0, 0, 0, False, 0, 7),  # non-mover taken as a mover
    (12, 3, "mover", 0, 8, 0, True, 0, 9),  # matched to the wrong mover
    (13, 4, "variable", 100, 0, 0, False, None, None),  # visit 4 failed
    (14, 4, "spurious", 0, 0, 0, False, None, None),
]


def tables(rows: list[tuple] = ROWS) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The truth and the database's DIASources of `rows`."""
    cols = list(zip(*rows, strict=True)) or [()] * 9
    names = ("diaSourceId", "visit", "kind", "diaObjectId", "ssObjectId", "transientId")
    truth = {
        n: np.array(c, dtype=str if n == "kind" else "i8")
        for n, c in zip(names, cols[:6], strict=True)
    }
    truth["predicted"] = np.array(cols[6], dtype=bool)
    stored = [r for r in rows if r[7] is not None]
    db = {
        "diaSourceId": np.array([r[0] for r in stored], dtype="i8"),
        "diaObjectId": np.array([r[7] for r in stored], dtype="i8"),
        "ssObjectId": np.array([r[8] for r in stored], dtype="i8"),
    }
    return db, truth


def test_hand_made_night():
    db, truth = tables()
    q = quality(db, truth, PRELOADED, visits=np.array([1, 2, 3]))
    json.dumps(q, allow_nan=False)
    assert q["processed"] == {
        "visits": 3,
        "diasources": 12,
        "missing_in_db": 0,
        "db_not_in_truth": 0,
    }
    assert q["not_processed"]["visits"] == 1
    assert q["not_processed"]["diasources"] == 2
    assert q["not_processed"]["by_kind"]["variable"] == 1
    assert q["not_processed"]["by_kind"]["spurious"] == 1

    c = q["completeness"]
    assert c["all"] == {"n": 3, "ok": 2, "fraction": pytest.approx(2 / 3)}
    assert c["variable"] == {"n": 2, "ok": 1, "fraction": 0.5}
    assert c["static"] == {"n": 1, "ok": 1, "fraction": 1.0}

    # the links: 1, 2, 3 to preloaded Objects, 9 to the transient's first detection
    assert q["purity"]["n"] == 4 and q["purity"]["ok"] == 3
    assert q["purity"]["wrong_by_kind"]["variable"] == 1

    m = q["movers"]
    assert m["recovery"] == {"n": 3, "ok": 1, "fraction": pytest.approx(1 / 3)}
    assert m["matched"] == 3
    assert m["matched_wrongly"] == 1
    assert m["non_movers_matched"] == 1
    assert m["non_movers_by_kind"]["spurious"] == 1

    new = q["new_objects"]
    assert new["n"] == 5
    assert new["by_kind"] == {
        "variable": 0,
        "static": 0,
        "transient": 2,
        "spurious": 1,
        "mover_predicted": 1,
        "mover_unpredicted": 1,
    }
    assert new["false"] == 1
    assert new["false_predicted_mover"] == 1
    assert new["false_preloaded"] == 0

    t = q["transients"]
    assert t["n_transients"] == 1
    assert t["first_created"] == 1
    assert t["later"] == {"n": 2, "ok": 1, "fraction": 0.5}
    assert "completeness 66.67%" in summary_line(q)


def test_one_wrong_link_lowers_purity_and_completeness_by_one_link():
    obj = [100 * (1 + i % 3) for i in range(10)]
    rows = [(i, 1, "variable", o, 0, 0, False, o, 0) for i, o in enumerate(obj, start=1)]
    db, truth = tables(rows)
    perfect = quality(db, truth, PRELOADED)
    assert perfect["completeness"]["all"]["fraction"] == 1.0
    assert perfect["purity"]["fraction"] == 1.0
    db["diaObjectId"][4] = 300 if db["diaObjectId"][4] != 300 else 200
    q = quality(db, truth, PRELOADED)
    assert q["completeness"]["all"]["fraction"] == pytest.approx(1.0 - 1 / 10)
    assert q["purity"]["fraction"] == pytest.approx(1.0 - 1 / 10)
    assert q["new_objects"]["false"] == 0


def test_a_preloaded_objects_source_made_new_counts_as_false_new():
    rows = [
        (1, 1, "variable", 100, 0, 0, False, 1, 0),  # should have linked to 100
        (2, 1, "static", 200, 0, 0, False, 200, 0),
        (3, 1, "spurious", 0, 0, 0, False, 3, 0),
    ]
    db, truth = tables(rows)
    q = quality(db, truth, PRELOADED)
    assert q["new_objects"]["false"] == 1
    assert q["new_objects"]["false_preloaded"] == 1
    assert q["new_objects"]["by_kind"]["variable"] == 1
    assert q["completeness"]["all"] == {"n": 2, "ok": 1, "fraction": 0.5}
    assert q["purity"]["fraction"] == 1.0  # the one link it made is right


def test_transient_linking_follows_observing_order():
    db, truth = tables()
    # Visit 3 observed first: its detection (10) made the Object, the others did not link to it.
    q = quality(db, truth, PRELOADED, visits=np.array([3, 2, 1]))
    assert q["transients"]["later"] == {"n": 2, "ok": 0, "fraction": 0.0}
    assert q["transients"]["first_created"] == 1


def test_visits_default_to_those_in_the_database_and_missing_sources_count():
    db, truth = tables()
    keep = db["diaSourceId"] != 3  # lost by the pipeline
    db = {k: v[keep] for k, v in db.items()}
    q = quality(db, truth, PRELOADED)
    assert q["processed"]["visits"] == 3
    assert q["processed"]["missing_in_db"] == 1
    assert q["completeness"]["static"] == {"n": 1, "ok": 0, "fraction": 0.0}
    assert q["not_processed"]["visits"] == 1


def test_db_rows_not_in_truth_are_counted_and_ignored():
    db, truth = tables()
    extra = {k: np.append(v, 999) for k, v in db.items()}
    q = quality(extra, truth, PRELOADED, visits=np.array([1, 2, 3]))
    assert q["processed"]["db_not_in_truth"] == 1
    assert q["purity"]["n"] == 4


def test_structured_arrays_and_arrow_tables():
    db, truth = tables()
    want = quality(db, truth, PRELOADED)
    rec = np.zeros(len(db["diaSourceId"]), [(k, "i8") for k in db])
    for k, v in db.items():
        rec[k] = v
    assert quality(rec, pa.table(truth), PRELOADED) == want


def test_empty_night_has_no_fractions():
    db, truth = tables([])
    q = quality(db, truth, PRELOADED)
    assert q["completeness"]["all"] == {"n": 0, "ok": 0, "fraction": None}
    assert q["purity"]["fraction"] is None
    assert q["transients"]["later"]["fraction"] is None
    json.dumps(q, allow_nan=False)


def test_without_a_starting_catalogue_the_first_detection_makes_the_object():
    rows = [
        (1, 1, "static", 100, 0, 0, False, 1, 0),  # first: makes Object 1
        (2, 2, "static", 100, 0, 0, False, 1, 0),  # links to it
        (3, 3, "static", 100, 0, 0, False, 3, 0),  # should have linked: false new
        (4, 1, "variable", 200, 0, 0, False, 4, 0),
        (5, 2, "variable", 200, 0, 0, False, 4, 0),
        (6, 1, "mover", 0, 7, 0, False, 6, 0),  # an unpredicted asteroid makes an Object
        (7, 2, "mover", 0, 7, 0, False, 6, 0),  # ... and its next detection joins it
    ]
    db, truth = tables(rows)
    q = quality(db, truth, np.empty(0, "i8"), visits=np.array([1, 2, 3]))
    assert q["completeness"]["all"] == {"n": 3, "ok": 2, "fraction": pytest.approx(2 / 3)}
    assert q["purity"]["n"] == 3 and q["purity"]["ok"] == 2
    assert q["purity"]["wrong_by_kind"]["mover"] == 1
    assert q["new_objects"]["false_preloaded"] == 1
