"""The command line a newcomer meets: one-line errors, help, quick start of light commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from events.types import INBOUND_SPECS
from tests.nights import make_archive

BIN = Path(sys.executable).parent
NIGHTPIPE = str(BIN / "nightpipe")
HEAVY = ("numpy", "healpy", "astropy", "sqlalchemy", "numba", "pyarrow", "matplotlib")


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NIGHTPIPE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small night archive (two visits)."""
    return make_archive(tmp_path_factory.mktemp("cli") / "archive", max_visits=2)


def _mistakes(tmp: Path, archive: Path) -> dict[str, tuple[list[str], str]]:
    """Each mistake: its arguments, and what its message must say."""
    inject = ["inject", "--run-dir", str(tmp)]
    not_opsim = tmp / "not_opsim.db"
    not_opsim.write_text("a text file, not an OpSim database\n")
    return {
        "region of two numbers": (
            ["simulate", str(tmp / "new1"), "--region", "1,2"],
            "--region: expected RA,DEC,RADIUS",
        ),
        "cadence not OpSim": (
            ["simulate", str(tmp / "new2"), "--cadence", str(not_opsim)],
            "not an SQLite database",
        ),
        "no visits": (
            ["simulate", str(tmp / "new3"), "--visits", "0"],
            "--visits: must be at least 1",
        ),
        "into an existing archive": (["simulate", str(archive)], "give --overwrite"),
        "replay a missing archive": (
            ["replay", str(tmp / "no-such-archive"), "--run-dir", str(tmp / "run1")],
            "no such archive directory",
        ),
        "replay into an unreachable server": (
            [
                "replay",
                str(archive),
                "--run-dir",
                str(tmp / "run2"),
                "--db",
                "postgresql+psycopg://nobody:secret@127.0.0.1:1/nowhere",
            ],
            "cannot connect",
        ),
        "inject a missing JSON file": (
            [*inject, "--json", str(tmp / "missing.json")],
            "--json",
        ),
        "inject a field of the wrong kind": (
            [*inject, "detection.diasources_ready", "--fov-id", "1", "--n-sources", "many"],
            "--n-sources: expected a whole number",
        ),
        "inject a field the type lacks": (
            [*inject, "telescope.next_visit", "--fov-id", "1", "--colour", "red"],
            "--colour: telescope.next_visit has no such field",
        ),
        "inject with no pipeline running": (
            [*inject, "control.shutdown"],
            "is a pipeline running",
        ),
        "status of a missing run": (["status", str(tmp / "no-such-run")], "no such run directory"),
    }


def test_each_mistake_gets_one_line_and_exit_code_2(archive: Path, tmp_path: Path) -> None:
    for name, (args, expected) in _mistakes(tmp_path, archive).items():
        got = _run(*args)
        lines = got.stderr.strip().splitlines()
        assert got.returncode == 2, (name, got.returncode, got.stderr)
        assert len(lines) == 1, (name, got.stderr)
        assert lines[0].startswith(f"nightpipe {args[0]}: error: "), (name, lines[0])
        assert expected in lines[0], (name, lines[0])
        assert "overwrite=True" not in lines[0] and "--n_sources" not in lines[0]
        assert "secret" not in lines[0], "the password is not shown"
        assert got.stdout == "", (name, got.stdout)


def test_status_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text(json.dumps({"pipeline": "p", "ranks": {}}))
    proc = subprocess.Popen(
        [NIGHTPIPE, "status", str(tmp_path), "--watch", "--interval", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert b"pipeline p" in proc.stdout.readline()  # like `| head -1`
    proc.stdout.close()
    assert proc.wait(60) == 141
    assert proc.stderr.read() == b""


def test_help_is_plain_and_inject_lists_the_event_types() -> None:
    top = _run("--help")
    assert top.returncode == 0 and "``" not in top.stdout
    assert ". .venv/bin/activate" in top.stdout
    inject = _run("inject", "--help")
    assert inject.returncode == 0
    for etype, specs in INBOUND_SPECS.items():
        line = next(x for x in inject.stdout.splitlines() if x.strip().startswith(etype))
        for spec in specs:
            assert "--" + spec.name.replace("_", "-") in line, (etype, spec.name, line)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["status", "{run}"],
        ["inject", "control.shutdown", "--address", "tcp://127.0.0.1:1", "--timeout", "0.2"],
    ],
    ids=["help", "status", "inject"],
)
def test_light_commands_import_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    """``--help``, ``status`` and ``inject`` start without the numerical stack."""
    (tmp_path / "status.json").write_text(json.dumps({"pipeline": "p", "ranks": {}}))
    argv = [a.format(run=tmp_path) for a in args]
    code = (
        "import sys\n"
        "from association.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('loaded:', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "loaded: []" in got.stderr, got.stderr
