"""The ``nightpipe`` command line.

Each subcommand imports what it needs when it runs: ``--help``, ``status`` and
``inject`` start without numpy, numba or the database drivers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from association.cli.alerts import COMMANDS as ALERT_COMMANDS
from association.cli.inject import add_inject, cmd_inject
from association.cli.keys import COMMANDS as KEY_COMMANDS
from association.cli.nights import COMMANDS as NIGHT_COMMANDS
from association.cli.usage import USAGE_EXIT, Parser, UsageError
from association.nights.job import Terminated

COMMANDS = {**NIGHT_COMMANDS, **ALERT_COMMANDS, **KEY_COMMANDS}

DESCRIPTION = """\
nightpipe runs an observatory's association pipeline under MPI, and simulates, replays and
reports on nights."""

EPILOG = """\
Start with: nightpipe demo. Each command's options: nightpipe COMMAND --help.
The commands and mpiexec are in .venv/bin after 'make install';
'. .venv/bin/activate' puts them on your PATH."""

PIPELINES = Path(__file__).parents[1] / "pipelines"


def config_path(name: str) -> Path:
    """A config file, or the name of a pipeline shipped with nightpipe (``association``)."""
    path = Path(name)
    if path.suffix != ".toml" and not path.is_file() and (PIPELINES / f"{name}.toml").exists():
        return PIPELINES / f"{name}.toml"
    return path


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--set STAGE.KEY=VALUE`` options as config overrides (values as TOML).

    ``settings.KEY`` names a pipeline setting, ``runtime.KEY`` a runtime one; any
    other prefix names a stage.
    """
    import tomllib

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        stage, dot, name = key.partition(".")
        if not (eq and dot and stage and name):
            raise UsageError(f"--set {item!r}: expected STAGE.KEY=VALUE")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        out.setdefault(stage, {})[name] = parsed
    return out


def cmd_run(args: argparse.Namespace) -> int:
    """Run a pipeline; under ``mpiexec`` each rank takes its role."""
    from framework.config import ConfigError, load_config
    from framework.runner import run_mpi

    overrides: dict[str, Any] = {}
    if args.endpoint:
        overrides.setdefault("runtime", {})["endpoint"] = args.endpoint
    if args.waiting:
        overrides.setdefault("runtime", {})["waiting"] = args.waiting
    if args.curve_keys:
        overrides.setdefault("runtime", {})["curve_keys"] = args.curve_keys
    if args.max_in_flight:
        overrides.setdefault("pipeline", {})["max_in_flight"] = args.max_in_flight
    stage_overrides = parse_sets(args.set)
    overrides.setdefault("runtime", {}).update(stage_overrides.pop("runtime", {}))
    settings = stage_overrides.pop("settings", {})
    runtime = stage_overrides.pop("runtime", {})
    if runtime:
        overrides.setdefault("runtime", {}).update(runtime)
    if args.db:
        settings["db_url"] = args.db
    if settings:
        overrides["settings"] = settings
    try:
        config = load_config(config_path(args.config), overrides, stage_overrides)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return run_mpi(config, Path(args.run_dir))


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status board of a pipeline's run directory."""
    from framework.status import format_status, read_status

    if not Path(args.run_dir).is_dir():
        raise UsageError(f"{args.run_dir}: no such run directory")
    while True:
        try:
            text = format_status(read_status(Path(args.run_dir)))
        except FileNotFoundError as exc:
            if not args.watch:
                raise UsageError(str(exc)) from None
            text = f"{exc}; waiting"
        if not args.watch:
            print(text)
            return 0
        print("\033[2J\033[H" + text, flush=True)
        time.sleep(args.interval)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = Parser(
        prog="nightpipe",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser(
        "run",
        help="run a pipeline (under mpiexec -n N)",
        description="Run a pipeline: mpiexec -n 3 nightpipe run association --run-dir RUN",
    )
    r.add_argument("config", help="pipeline TOML file, or 'association'")
    r.add_argument("--run-dir", default="run", help="journal, database, log, status (default: run)")
    r.add_argument("--endpoint", help="ZeroMQ address to listen on (default from config)")
    r.add_argument("--waiting", choices=("active", "passive"), help="override runtime.waiting")
    r.add_argument(
        "--curve-keys",
        metavar="DIR",
        help="CURVE key directory (nightpipe keys): clients must have keys",
    )
    r.add_argument("--db", help="database URL for the load stage (default: SQLite in the run dir)")
    r.add_argument("--max-in-flight", type=int, help="override [pipeline] max_in_flight")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override a stage's config, e.g. crossmatch.default_radius_arcsec=1.5; "
        "settings.KEY and runtime.KEY override [settings] and [runtime]",
    )

    add_inject(sub)

    s = sub.add_parser("status", help="show the status board of a running pipeline")
    s.add_argument("run_dir", nargs="?", default="run", help="the run directory (default: run)")
    s.add_argument("--watch", action="store_true", help="keep printing it")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between prints")
    for add, _ in COMMANDS.values():
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nightpipe`` command; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    prog = f"nightpipe {args.command}"
    if extra and args.command != "inject":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handlers = {"run": cmd_run, "status": cmd_status}
    handlers.update({name: cmd for name, (_, cmd) in COMMANDS.items()})
    try:
        if args.command == "inject":
            return cmd_inject(args, extra)
        return handlers[args.command](args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    except BrokenPipeError:
        # The reader went away (``nightpipe status | head``): stop quietly, as
        # other commands do, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (SIGINT)", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: stopped (SIGTERM)", file=sys.stderr)
        return 143
