"""The predictions stage: predictions are optional, a missing file is none, a bad file fails."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from association.inputs.readers import PREDICTION_DTYPE, BadInputError, write_table
from association.inputs.roots import DataRoots
from association.stages.predictions import PredictionsStage
from association.stages.visit import MasterVisit
from events.envelope import Event
from events.types import PREDICTIONS_READY
from framework.stage import MasterContext, NoConfig
from framework.status import Board


def _context(tmp_path: Path, paths: list[str]) -> MasterContext:
    class Shared:
        roots = DataRoots([tmp_path])

    ev = Event.new(PREDICTIONS_READY, 7, {"paths": paths})
    return MasterContext(
        rank=0,
        n_slices=1,
        run_dir=tmp_path,
        log=logging.getLogger("test.predictions"),
        board=Board(0),
        shared=Shared(),
        key=7,
        state=MasterVisit(),
        events={PREDICTIONS_READY: ev},
    )


def _predictions(path: Path) -> Path:
    p = np.zeros(2, PREDICTION_DTYPE)
    p["ssObjectId"] = [1, 2]
    p["ra"], p["dec"] = 10.0, -30.0
    p["semiMajorAxis"], p["semiMinorAxis"] = 2.0, 1.0
    p["mjd"] = 60218.0
    write_table(path, p)
    return path


def test_a_missing_predictions_file_is_no_predictions_with_a_warning(tmp_path, caplog):
    good = _predictions(tmp_path / "p.parquet")
    ctx = _context(tmp_path, [str(tmp_path / "gone.parquet"), str(good)])
    with caplog.at_level(logging.WARNING, "test.predictions"):
        PredictionsStage("predictions", NoConfig()).preprocess(ctx)
    assert list(ctx.state.predictions["ssObjectId"]) == [1, 2]
    assert "gone.parquet" in caplog.text and "going on without its predictions" in caplog.text


def test_a_bad_predictions_file_fails_the_visit(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(BadInputError, match=r"bad\.parquet"):
        PredictionsStage("predictions", NoConfig()).preprocess(_context(tmp_path, [str(bad)]))
