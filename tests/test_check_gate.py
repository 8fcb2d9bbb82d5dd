"""``replay --check`` is a gate: failed visits and quality under its thresholds fail it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from association.nights import report as rep
from tests.nights import copy_archive
from tests.test_report import run_dir  # noqa: F401 (the fixture: 4 visits, one failed)

NIGHTPIPE = Path(sys.executable).parent / "nightpipe"


def test_gate_names_each_reason(run_dir):  # noqa: F811
    r = rep.build_report(run_dir)
    reasons = rep.gate(r)
    assert reasons[0] == "1 visit(s) failed: 3"
    assert reasons[1] == "1 visit(s) unfinished"
    assert "completeness 0.7500 (3 of 4) is under 0.99" in reasons
    assert "purity 0.7500 (3 of 4) is under 0.99" in reasons
    assert not any("mover" in x for x in reasons)  # 1.0: recovered
    loose = rep.gate(r, {"completeness": 0.5, "purity": 0.5})
    assert loose == reasons[:2]


def test_quality_without_a_starting_catalogue(run_dir):  # noqa: F811
    archive = Path(json.loads((run_dir / "replay.json").read_text())["archive"])
    manifest = json.loads((archive / "manifest.json").read_text())
    manifest["files"]["catalogue_objects"] = None
    (archive / "manifest.json").write_text(json.dumps(manifest))
    q = rep.build_report(run_dir)["quality"]
    assert q is not None
    assert q["purity"]["n"] > 0 and q["completeness"]["all"]["n"] >= 0


@pytest.mark.mpi
def test_replay_check_fails_on_a_failed_visit(pole_archive, tmp_path):
    archive = copy_archive(pole_archive, tmp_path / "archive")
    lines = (archive / "events.jsonl").read_text().splitlines()
    victim = json.loads(lines[0])["fov_id"]
    path = archive / "data" / f"visit_{victim}_diasources.parquet"
    t = pq.read_table(path)
    ra = t.column("ra").to_numpy().copy()
    ra[0] = 400.0
    pq.write_table(t.set_column(t.column_names.index("ra"), "ra", pa.array(ra)), path)
    run = subprocess.run(
        [str(NIGHTPIPE), "replay", str(archive), "--run-dir", str(tmp_path / "run"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"check failed: 1 visit(s) failed: {victim}" in run.stderr
    assert "completeness" in run.stdout  # the quality was reported all the same
    # the undamaged night passes with the default thresholds
    clean = subprocess.run(
        [str(NIGHTPIPE), "replay", str(pole_archive), "--run-dir", str(tmp_path / "ok"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "check passed" in clean.stdout
    # and fails a threshold above what it reaches
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert np.isfinite(report["quality"]["completeness"]["all"]["fraction"])
    assert rep.gate(report, {"completeness": 1.0 + 1e-9})[0].startswith("completeness")


def test_thresholds_must_be_fractions(tmp_path):
    run = subprocess.run(
        [str(NIGHTPIPE), "replay", str(tmp_path), "--check", "--min-purity", "99"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "expected a fraction" in run.stderr
