"""The ``nightpipe`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from association.cli.alerts import COMMANDS as ALERT_COMMANDS
from association.cli.nights import COMMANDS as NIGHT_COMMANDS
from events.envelope import Event
from events.types import BODY_SPECS, KNOWN_TYPES, is_control
from framework.rundir import RunDir

COMMANDS = {**NIGHT_COMMANDS, **ALERT_COMMANDS}


def endpoint_of(run_dir: str | Path) -> dict[str, Any]:
    """The addresses a master running in `run_dir` listens and publishes on."""
    path = RunDir(run_dir).endpoint
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path}: not found; is a pipeline running in {run_dir}?") from None


def _coerce(event_type: str, name: str, values: list[str]) -> Any:
    kinds = {f.name: f.kind for f in BODY_SPECS.get(event_type, ())}
    kind = kinds.get(name)
    try:
        if kind == "str_list":
            return [p for v in values for p in v.split(",") if p]
        value = values[-1]
        if kind == "float":
            return float(value)
        if kind == "int":
            return int(value)
        if kind == "dict":
            return json.loads(value)
        if kind == "str":
            return value
        return json.loads(value)
    except (ValueError, json.JSONDecodeError):
        if kind is None:
            return values[-1]
        raise SystemExit(f"--{name}: expected {kind}, got {values[-1]!r}") from None


def _body_from_args(event_type: str, extra: list[str]) -> dict[str, Any]:
    fields: dict[str, list[str]] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--"):
            raise SystemExit(f"unexpected argument {arg!r}: fields are given as --name value")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise SystemExit(f"--{name}: missing value")
            i += 1
            value = extra[i]
        fields.setdefault(name.replace("-", "_"), []).append(value)
        i += 1
    return {k: _coerce(event_type, k, v) for k, v in fields.items()}


def cmd_inject(args: argparse.Namespace, extra: list[str]) -> int:
    """Send one event to a running master and say whether it was accepted."""
    from events.client import inject

    address = args.address or endpoint_of(args.run_dir)["address"]
    if args.json:
        text = sys.stdin.read() if args.json == "-" else Path(args.json).read_text()
        payload: Any = text
    else:
        if not args.type:
            raise SystemExit("give an event TYPE, or --json FILE|-")
        if args.type not in KNOWN_TYPES:
            raise SystemExit(f"unknown event type {args.type!r}; known: {sorted(KNOWN_TYPES)}")
        if args.fov_id is None and not is_control(args.type):
            raise SystemExit(f"{args.type} needs --fov-id")
        body = _body_from_args(args.type, extra)
        payload = Event.new(args.type, args.fov_id, body, source=args.source, id=args.id)
    try:
        reply = inject(address, payload, timeout=args.timeout)
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if reply.get("ok"):
        dup = " (duplicate: already accepted)" if reply.get("duplicate") else ""
        print(f"accepted {reply.get('id')}{dup}")
        return 0
    print(f"rejected: {reply.get('error')}", file=sys.stderr)
    return 1


PIPELINES = Path(__file__).parents[1] / "pipelines"


def config_path(name: str) -> Path:
    """A config file, or the name of a pipeline shipped with nightpipe (``association``)."""
    path = Path(name)
    if path.suffix != ".toml" and not path.is_file() and (PIPELINES / f"{name}.toml").exists():
        return PIPELINES / f"{name}.toml"
    return path


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--set STAGE.KEY=VALUE`` options as config overrides (values as TOML).

    ``settings.KEY`` names a pipeline setting, ``runtime.KEY`` a runtime one
    (``[runtime]``); any other prefix names a stage.
    """
    import tomllib

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        stage, dot, name = key.partition(".")
        if not (eq and dot and stage and name):
            raise SystemExit(f"--set {item!r}: expected STAGE.KEY=VALUE")
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
    if args.max_in_flight:
        overrides.setdefault("pipeline", {})["max_in_flight"] = args.max_in_flight
    stage_overrides = parse_sets(args.set)
    overrides.setdefault("runtime", {}).update(stage_overrides.pop("runtime", {}))
    settings = stage_overrides.pop("settings", {})
    if args.db:
        settings["db_url"] = args.db
    if settings:
        overrides["settings"] = settings
    try:
        config = load_config(config_path(args.config), overrides, stage_overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_mpi(config, Path(args.run_dir))


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status board of a pipeline's run directory."""
    from framework.status import format_status, read_status

    while True:
        try:
            text = format_status(read_status(Path(args.run_dir)))
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if not args.watch:
                return 1
            text = ""
        if args.watch:
            print("\033[2J\033[H" + text, flush=True)
            time.sleep(args.interval)
        else:
            print(text)
            return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="nightpipe", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a pipeline (under mpiexec -n N)")
    r.add_argument("config", help="pipeline TOML file, or 'association'")
    r.add_argument("--run-dir", default="run", help="journal, database, log, status (default: run)")
    r.add_argument("--endpoint", help="ZeroMQ address to listen on (default from config)")
    r.add_argument("--waiting", choices=("active", "passive"), help="override runtime.waiting")
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

    i = sub.add_parser(
        "inject",
        help="send one event to a running pipeline",
        description="Body fields are given as --name value (lists comma-separated).",
    )
    i.add_argument("type", nargs="?", help="event type, e.g. telescope.next_visit")
    i.add_argument("--fov-id", type=int)
    i.add_argument("--json", help="send this JSON envelope (file or - for stdin) as it is")
    where = i.add_mutually_exclusive_group()
    where.add_argument("--run-dir", default="run", help="find the master's address here")
    where.add_argument("--address", help="the master's ZeroMQ address")
    i.add_argument("--id", help="event id (default: a fresh one)")
    i.add_argument("--source", default="nightpipe-inject")
    i.add_argument("--timeout", type=float, default=5.0)

    s = sub.add_parser("status", help="show the status board of a running pipeline")
    s.add_argument("run_dir", nargs="?", default="run")
    s.add_argument("--watch", action="store_true", help="keep printing it")
    s.add_argument("--interval", type=float, default=1.0)
    for add, _ in COMMANDS.values():
        add(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``nightpipe`` command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "inject":
        code = cmd_inject(args, extra)
    else:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        handlers = {"run": cmd_run, "status": cmd_status}
        handlers.update({name: cmd for name, (_, cmd) in COMMANDS.items()})
        code = handlers[args.command](args)
    raise SystemExit(code)
