"""Issue 9's faults, end to end under mpiexec, on a hand-made night (`tests/rules_night.py`).

One-to-one association by cost, movers first with no cap on the ellipse,
variability from the flux history, a big field on a sparse sky, and the same
rows whatever the number of Slices.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from association.storage import open_storage
from tests.nights import db_rows, replay
from tests.rules_night import Night, make_rules_night

pytestmark = pytest.mark.mpi

RANKS = (2, 3, 5)  # 1, 2 and 4 Slices


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Night:
    return make_rules_night(tmp_path_factory.mktemp("rules") / "archive")


@pytest.fixture(scope="module")
def runs(night, tmp_path_factory) -> dict[int, Path]:
    out = {}
    for ranks in RANKS:
        run = tmp_path_factory.mktemp(f"rules{ranks}") / "run"
        summary = replay(night.path, run, ranks=ranks)
        assert summary["done"] == 5 and summary["failed"] == 0, summary
        out[ranks] = run
    return out


class Db:
    """A run's stored DIASources and Objects, by id."""

    def __init__(self, run: Path) -> None:
        with open_storage(None, run, None) as storage, storage.engine.connect() as conn:
            self.sources = {
                r[0]: r[1:]
                for r in conn.execute(
                    text('SELECT "diaSourceId", visit, "diaObjectId", "ssObjectId" FROM diasources')
                )
            }
            self.objects = {
                r[0]: r[1:]
                for r in conn.execute(
                    text('SELECT "diaObjectId", "nDiaSources", "isVariable" FROM objects')
                )
            }
            self.moving = set(conn.execute(text('SELECT visit, "ssObjectId" FROM moving_matches')))

    def object_of(self, source: int) -> int:
        return self.sources[source][1]

    def mover_of(self, source: int) -> int:
        return self.sources[source][2]


@pytest.fixture(scope="module")
def db(runs) -> Db:
    return Db(runs[3])


def test_the_same_rows_for_1_2_and_4_slices(runs):
    # components across chunk borders owned by different Slices, decided once
    reference = db_rows(runs[3])
    for ranks in RANKS:
        assert db_rows(runs[ranks]) == reference, ranks


def test_two_sources_near_one_object_one_gets_it_the_other_makes_one(night, db):
    ids = night.ids["twins"]
    assert db.object_of(ids["near"]) == ids["object"]
    assert db.object_of(ids["far"]) == ids["far"]  # a new Object, its own id
    assert db.objects[ids["far"]][0] == 1 and db.objects[ids["object"]][0] == 2


def test_one_object_takes_at_most_one_source_a_visit(night, db):
    pairs = [(v, o) for v, o, _ in db.sources.values() if v > 0 and o]
    assert len(pairs) == len(set(pairs))
    for a, b, srcs in night.borders:  # three sources about two Objects, a border between
        assert [db.object_of(s) for s in srcs[:3]] == [a, b, srcs[2]]


def test_asteroid_in_back_to_back_exposures_matched_both_times_no_object(night, db):
    ids = night.ids["pair"]
    for visit, source in ((1, ids["first"]), (2, ids["second"])):
        assert db.mover_of(source) == ids["ss"] and db.object_of(source) == 0
        assert (visit, ids["ss"]) in db.moving
        assert source not in db.objects


def test_unpredicted_pair_makes_an_object_that_is_not_variable_nor_captures(night, db):
    ids = night.ids["slow"]
    made = ids["first"]
    assert db.object_of(ids["first"]) == db.object_of(ids["second"]) == made
    assert db.objects[made][:2] == (2, False)  # two detections 80 s apart: not variable
    # 30 minutes on, 0.1" from that Object and inside its prediction: the mover's
    assert db.mover_of(ids["third"]) == ids["ss"] and db.object_of(ids["third"]) == 0
    assert (3, ids["ss"]) in db.moving


def test_a_variable_star_inside_a_large_ellipse_is_not_the_asteroid(night, db):
    star = night.ids["star"]
    assert db.object_of(star["source"]) == star["object"] and db.mover_of(star["source"]) == 0
    assert (1, star["ss"]) not in db.moving
    # variable by its flux history, not the catalogue's word: the flare made it so
    flare = night.ids["flare"]
    assert db.object_of(flare["first"]) == db.object_of(flare["later"]) == flare["object"]
    assert db.objects[flare["object"]] == (5, True)
    assert (4, flare["ss"]) not in db.moving


def test_a_3_sigma_ellipse_beyond_60_arcsec_holds_its_source(night, db):
    ids = night.ids["wide"]
    assert db.mover_of(ids["source"]) == ids["ss"] and (1, ids["ss"]) in db.moving


def test_a_big_field_on_a_sparse_sky(night, db):
    # visit 5: 47 deg^2, 78 chunks, a few Objects in each
    assert {s: db.object_of(s) for s in night.sparse} == night.sparse
    assert all(db.sources[s][0] == 5 for s in night.sparse)
