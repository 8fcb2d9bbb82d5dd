"""Files other people write: derived columns derived, bad columns named, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from association.columns import BANDS
from association.inputs.catalogue import read_diasources, read_objects
from association.inputs.readers import BadInputError
from association.inputs.readers import read_diasources as read_visit_diasources
from association.nights.preload import catalogue_loaded, preload
from association.sky.partition import Partition
from tests.nights import copy_archive
from tests.test_inputs import sources

PART = Partition()


def objects_file(path: Path, n: int = 50, **replace) -> Path:
    """A minimal outside-written Objects table (no fine), with columns replaced or dropped."""
    rng = np.random.default_rng(4)
    cols = {
        "diaObjectId": np.arange(1, n + 1, dtype=np.int64),
        "ra": rng.uniform(10, 11, n),
        "dec": rng.uniform(-5, -4, n),
        "nDiaSources": np.full(n, 2, np.int32),
        "firstMjd": np.full(n, 59000.0),
        "lastMjd": np.full(n, 59100.0),
        "r_psfFluxNdata": np.full(n, 2, np.int16),
        "r_psfFluxMean": np.full(n, 1000.0),
    }
    cols.update(replace)
    pq.write_table(pa.table({k: v for k, v in cols.items() if v is not None}), path)
    return path


def history_file(path: Path, objects: np.ndarray, **replace) -> Path:
    n = len(objects)
    cols = {
        "diaSourceId": np.arange(10_001, 10_001 + n, dtype=np.int64),
        "diaObjectId": objects["diaObjectId"],
        "ra": objects["ra"],
        "dec": objects["dec"],
        "midpointMjdTai": np.full(n, 59050.0),
        "band": np.array(["r"] * n),
        "psfFlux": np.full(n, 900.0),
        "psfFluxErr": np.full(n, 30.0),
    }
    cols.update(replace)
    pq.write_table(pa.table({k: v for k, v in cols.items() if v is not None}), path)
    return path


def test_objects_without_fine_get_it_derived(tmp_path):
    obj = read_objects(objects_file(tmp_path / "o.parquet"))
    assert np.array_equal(obj["fine"], PART.fine_index(obj["ra"], obj["dec"]))
    assert obj["psfFluxNdata"][:, BANDS.index("r")].tolist() == [2] * 50
    assert np.isnan(obj["psfFluxMean"][:, BANDS.index("g")]).all()
    assert not obj["isVariable"].any()


def test_objects_with_a_wrong_fine_are_refused(tmp_path):
    path = objects_file(tmp_path / "o.parquet", fine=np.zeros(50, np.int64))
    with pytest.raises(BadInputError) as info:
        read_objects(path)
    e = info.value
    assert (e.path, e.column, e.row) == (str(path), "fine", 0)
    assert "leave it out" in str(e) and "50 rows differ" in str(e)


def test_an_objects_fine_of_its_creating_position_is_accepted(tmp_path):
    rng = np.random.default_rng(1)
    ra, dec = rng.uniform(10, 11, 50), rng.uniform(-5, -4, 50)
    # created 0.5" away from where its mean now is
    created = PART.fine_index(ra + 0.5 / 3600, dec)
    path = objects_file(tmp_path / "o.parquet", ra=ra, dec=dec, fine=created)
    obj = read_objects(path)
    assert np.array_equal(obj["fine"], PART.fine_index(ra, dec))  # derived all the same
    far = PART.fine_index(ra + 60 / 3600, dec)
    with pytest.raises(BadInputError, match=r"\d\d\.\d arcsec from the Object"):
        read_objects(objects_file(tmp_path / "o2.parquet", ra=ra, dec=dec, fine=far))


@pytest.mark.parametrize(
    ("replace", "column", "problem"),
    [
        ({"ra": None}, "ra", "missing"),
        ({"lastMjd": None}, "lastMjd", "missing"),
        ({"dec": np.array(["x"] * 50)}, "dec", "is not a number"),
        ({"diaObjectId": np.full(50, 1.5)}, "diaObjectId", "is not an integer"),
        ({"isVariable": np.zeros(50, np.int64)}, "isVariable", "is not a boolean"),
        ({"nDiaSources": np.full(50, -1)}, "nDiaSources", "negative"),
        ({"ra": np.full(50, 400.0)}, "ra", "out of range"),
        ({"fine": np.full(50, -3)}, "fine", "not a HEALPix index"),
    ],
)
def test_bad_object_columns_are_named(tmp_path, replace, column, problem):
    path = objects_file(tmp_path / "o.parquet", **replace)
    with pytest.raises(BadInputError, match=problem) as info:
        read_objects(path)
    assert info.value.column == column and info.value.path == str(path)
    assert str(path) in str(info.value)


def test_earlier_diasources_checked_and_fine_derived(tmp_path):
    obj = read_objects(objects_file(tmp_path / "o.parquet"))
    hist = read_diasources(history_file(tmp_path / "h.parquet", obj), obj["diaObjectId"])
    assert np.array_equal(hist["fine"], obj["fine"])
    assert (hist["visit"] == -1).all() and (hist["ssObjectId"] == 0).all()
    assert np.isnan(hist["raErr"]).all()
    right = PART.fine_index(obj["ra"], obj["dec"])
    read_diasources(history_file(tmp_path / "h1.parquet", obj, fine=right), obj["diaObjectId"])
    wrong = right.copy()
    wrong[7] += 1
    path = history_file(tmp_path / "h2.parquet", obj, fine=wrong)
    with pytest.raises(BadInputError) as info:
        read_diasources(path, obj["diaObjectId"])
    assert (info.value.column, info.value.row) == ("fine", 7)
    path = history_file(tmp_path / "h3.parquet", obj, diaObjectId=obj["diaObjectId"] + 1000)
    with pytest.raises(BadInputError, match="no Object of the catalogue") as info:
        read_diasources(path, obj["diaObjectId"])
    path = history_file(tmp_path / "h4.parquet", obj, band=None)
    with pytest.raises(BadInputError, match="missing") as info:
        read_diasources(path, obj["diaObjectId"])
    assert info.value.column == "band"


def test_a_visit_file_with_a_wrong_fine_is_refused(tmp_path):
    src = sources(10)
    cols = {n: src[n] for n in src.dtype.names if n != "band"}
    cols["band"] = np.array(list(BANDS))[src["band"]]
    right = PART.fine_index(src["ra"], src["dec"])
    pq.write_table(pa.table(cols | {"fine": right}), tmp_path / "ok.parquet")
    got = read_visit_diasources(tmp_path / "ok.parquet", 1, PART.fine_index)
    assert np.array_equal(got["fine"], right)
    pq.write_table(pa.table(cols | {"fine": np.zeros(10, np.int64)}), tmp_path / "bad.parquet")
    with pytest.raises(BadInputError) as info:
        read_visit_diasources(tmp_path / "bad.parquet", 1, PART.fine_index)
    assert (info.value.column, info.value.row) == ("fine", 0)


def test_preload_of_a_bad_catalogue_loads_nothing(tmp_path, sqlite_storage):
    obj_path = objects_file(tmp_path / "o.parquet")
    obj = read_objects(obj_path)
    bad_hist = history_file(tmp_path / "h.parquet", obj, psfFluxErr=np.full(50, -1.0))
    with pytest.raises(BadInputError, match="psfFluxErr"):
        preload(sqlite_storage, obj_path, bad_hist)
    assert not catalogue_loaded(sqlite_storage)
    assert preload(sqlite_storage, obj_path, history_file(tmp_path / "h2.parquet", obj)) == 50


@pytest.mark.parametrize("damage", ["zero", "drop"])
def test_replay_of_an_archive_with_a_bad_catalogue_says_why(pole_archive, tmp_path, damage):
    archive = copy_archive(pole_archive, tmp_path / "archive")
    path = archive / "catalogue" / "objects.parquet"
    table = pq.read_table(path)
    if damage == "zero":
        table = table.set_column(
            table.schema.get_field_index("fine"), "fine", pa.array(np.zeros(len(table), "i8"))
        )
    else:
        table = table.drop_columns(["dec"])
    pq.write_table(table, path)
    nightpipe = Path(sys.executable).parent / "nightpipe"
    run = subprocess.run(
        [str(nightpipe), "replay", str(archive), "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1
    column = "fine" if damage == "zero" else "dec"
    assert f"catalogue objects file '{path}', column '{column}'" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
