"""``nightpipe inject``: one event into a running pipeline, its body given as options."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from association.cli.usage import UsageError
from events.types import INBOUND_SPECS, FieldSpec, is_control
from framework.rundir import RunDir

KIND_METAVAR = {"float": "X", "int": "N", "str": "TEXT", "str_list": "A,B,...", "dict": "JSON"}


def option(name: str) -> str:
    """The command-line option of a body field: ``n_sources`` -> ``--n-sources``."""
    return "--" + name.replace("_", "-")


def _field_usage(spec: FieldSpec) -> str:
    text = f"{option(spec.name)} {KIND_METAVAR.get(spec.kind, 'VALUE')}"
    return text if spec.required else f"[{text}]"


def event_types_help() -> str:
    """The epilog of ``inject --help``: each event type and its body fields."""
    width = max(len(t) for t in INBOUND_SPECS)
    lines = ["event types and their body fields ([...] optional; lists comma-separated):"]
    for etype, specs in INBOUND_SPECS.items():
        fov = "" if is_control(etype) else "--fov-id N "
        fields = " ".join(_field_usage(s) for s in specs)
        lines.append(f"  {etype:<{width}}  {fov}{fields}")
    lines.append(
        "\nexample: nightpipe inject telescope.next_visit --run-dir RUN --fov-id 1 "
        "--mjd 60218.1 --ra 10 --dec -30 --filter r"
    )
    return "\n".join(lines)


def add_inject(sub: Any) -> None:
    """``nightpipe inject``."""
    p = sub.add_parser(
        "inject",
        help="send one event to a running pipeline",
        description="Send one event to a running pipeline and say whether it was accepted. "
        "Body fields are given as --name value.",
        epilog=event_types_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("type", nargs="?", help="event type (listed below)")
    p.add_argument("--fov-id", type=int, help="the visit (field of view) it belongs to")
    p.add_argument("--json", help="send this JSON envelope (a file, or - for stdin) as it is")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--run-dir", default="run", help="find the master's address here")
    where.add_argument("--address", help="the master's ZeroMQ address")
    p.add_argument("--id", help="event id (default: a fresh one)")
    p.add_argument("--source", default="nightpipe-inject")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    p.add_argument("--key", help="client CURVE secret key file, for a master that requires one")
    p.add_argument("--server-key", help="the master's public CURVE key (default: endpoint.json)")


def _coerce(typed: str, spec: FieldSpec, values: list[str]) -> Any:
    kinds = {"float": float, "int": int, "str": str}
    if spec.kind == "str_list":
        return [p for v in values for p in v.split(",") if p]
    value = values[-1]
    try:
        if spec.kind == "dict":
            return json.loads(value)
        return kinds.get(spec.kind, json.loads)(value)
    except ValueError:
        what = {"float": "a number", "int": "a whole number", "dict": "a JSON object"}
        expected = what.get(spec.kind, spec.kind)
        raise UsageError(f"{typed}: expected {expected}, got {value!r}") from None


def body_from_args(event_type: str, extra: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The event body from ``--name value`` options; also each field's option as typed."""
    specs = {s.name: s for s in INBOUND_SPECS[event_type]}
    values: dict[str, list[str]] = {}
    typed: dict[str, str] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}: body fields are given as --name value")
        opt, eq, value = arg.partition("=")
        name = opt[2:].replace("-", "_")
        if name not in specs:
            known = " ".join(option(n) for n in specs) or "none"
            raise UsageError(f"{opt}: {event_type} has no such field; its fields: {known}")
        if not eq:
            if i + 1 >= len(extra):
                raise UsageError(f"{opt}: missing value")
            i += 1
            value = extra[i]
        values.setdefault(name, []).append(value)
        typed[name] = opt
        i += 1
    body = {n: _coerce(typed[n], specs[n], v) for n, v in values.items()}
    return body, typed


def _event(args: argparse.Namespace, extra: list[str]) -> Any:
    from events.envelope import Event
    from events.validate import EventError, parse_event

    if args.json:
        if extra:
            raise UsageError(f"--json sends the file as it is; unexpected {' '.join(extra)}")
        if args.json == "-":
            return sys.stdin.read()
        try:
            return Path(args.json).read_text()
        except OSError as exc:
            raise UsageError(f"--json {args.json}: {exc.strerror or exc}") from None
    if not args.type:
        raise UsageError("give an event TYPE (see the list in nightpipe inject --help), or --json")
    if args.type not in INBOUND_SPECS:
        known = ", ".join(INBOUND_SPECS)
        raise UsageError(f"unknown event type {args.type!r}; known: {known}")
    if args.fov_id is None and not is_control(args.type):
        raise UsageError(f"{args.type} needs --fov-id")
    body, typed = body_from_args(args.type, extra)
    event = Event.new(args.type, args.fov_id, body, source=args.source, id=args.id)
    try:
        parse_event(event.to_dict(), inbound=True)
    except EventError as exc:
        field = exc.field or ""
        if field.startswith("body."):
            name = field.removeprefix("body.")
            raise UsageError(f"{typed.get(name, option(name))}: {exc.reason}") from None
        where = f"--{field.replace('_', '-')}: " if field else ""
        raise UsageError(f"{where}{exc.reason}") from None
    return event


def endpoint_of(run_dir: str | Path) -> dict[str, Any]:
    """The addresses a master running in `run_dir` listens and publishes on."""
    path = RunDir(run_dir).endpoint
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: not found; is a pipeline running in {run_dir}?") from None


def client_keys(info: dict[str, Any], key: str | None, server_key: str | None) -> Any:
    """CURVE keys for a master that asks for them (its endpoint.json names its public key)."""
    from events.curve import ClientKeys, KeyFileError

    server = server_key or info.get("server_key")
    if server is None:
        return None
    secret = key or (
        Path(info["curve_keys"]) / "client.key_secret" if "curve_keys" in info else None
    )
    if secret is None:
        raise UsageError("this master requires CURVE keys: give --key CLIENT.key_secret")
    try:
        return ClientKeys.load(secret, server)
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None


def cmd_inject(args: argparse.Namespace, extra: list[str]) -> int:
    """Send one event to a running master and say whether it was accepted."""
    from events.client import inject

    payload = _event(args, extra)
    info = {} if args.address else endpoint_of(args.run_dir)
    address = args.address or info["address"]
    keys = client_keys(info, args.key, args.server_key)
    try:
        reply = inject(address, payload, timeout=args.timeout, keys=keys)
    except (TimeoutError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if reply.get("ok"):
        dup = " (duplicate: already accepted)" if reply.get("duplicate") else ""
        print(f"accepted {reply.get('id')}{dup}")
        return 0
    print(f"rejected: {reply.get('error')}", file=sys.stderr)
    return 1
