"""The report of a night's run: events, timings, latency, counts, failures, quality, plots.

Everything comes from the run directory: the journal (events, with the times
the master journaled them, and outcomes), the database, and ``replay.json``
whose archives hold the truth of the simulated nights. A run of several
nights of a survey is reported as a whole and night by night.
"""

from __future__ import annotations

import argparse
import functools
import json
import sqlite3
import sys
import tomllib
import warnings
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from association.nights.opsim import night_start
from association.nights.preload import preloads
from association.nights.quality import quality
from association.rundir import NightRunDir
from association.sky.fov import DEFAULT_FOV_RADIUS_DEG
from association.storage import SQLITE_NAME, Storage, StorageError, open_storage
from association.storage import tables as db
from events.archive import Archive
from events.types import ALERTS_READY, DIASOURCES_READY, NEXT_VISIT, VISIT_DONE, VISIT_FAILED
from framework.metrics import processing_latency

EVENT_COLUMNS = "seq, type, fov_id, time, received, direction, json, expired"
"""The journal columns `event_row` takes, in order."""
PIPELINE = Path(__file__).parents[1] / "pipelines" / "association.toml"
SKY_NSIDE = 32
MAX_VISIT_ROWS = 20  # in the text; the JSON has every visit
MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)
LATENCY_KINDS = {
    "processing": "processing: detections -> alerts, own work",
    "queue_wait": f"queue wait: {NEXT_VISIT} -> start",
    "end_to_end": "end to end: detections in -> alerts out",
}


class ReportError(RuntimeError):
    """The run directory cannot be reported on; the message says why."""


# -- reading the run --------------------------------------------------------------------------


def _journal_rows(path: Path) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Every journaled event (body decoded) in order, and every visit's outcome."""
    if not path.is_file():
        raise ReportError(f"{path}: no journal; is {path.parent} a run directory?")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq").fetchall()
        outcomes = dict(conn.execute("SELECT fov_id, outcome FROM outcomes").fetchall())
    finally:
        conn.close()
    return [event_row(r) for r in rows], {int(k): str(v) for k, v in outcomes.items()}


def event_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """One journal row (`EVENT_COLUMNS`) as the report's event dict, body decoded."""
    seq, t, fov, sent, received, direction, text, expired = row
    return {
        "seq": seq,
        "type": t,
        "fov_id": fov,
        "time": sent,
        "received": received,
        "direction": direction,
        "body": json.loads(text).get("body") or {},
        "expired": bool(expired),
    }


def _read_replay(run_dir: Path) -> dict[str, Any] | None:
    path = NightRunDir(run_dir).replay
    return json.loads(path.read_text()) if path.is_file() else None


@functools.cache
def _pipeline_stages() -> tuple[tuple[str, ...], str | None]:
    """The shipped pipeline's stage names, and the stage processing latency counts from.

    That stage is its ``[runtime] latency_from``, as the master's metrics take it.
    """
    try:
        config = tomllib.loads(PIPELINE.read_text())
        stages = config["stages"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return (), None
    names = tuple(s["name"] for s in stages)
    return names, config.get("runtime", {}).get("latency_from") or None


def _stage_order(names: set[str]) -> list[str]:
    """Stage names in pipeline order (the shipped association pipeline), ``total`` last."""
    known, _ = _pipeline_stages()
    first = [n for n in known if n in names]
    rest = sorted(names - set(first) - {"total"})
    return first + rest + (["total"] if "total" in names else [])


def _processing(timings: dict[str, float]) -> float:
    """Own work from the stage that waits for the detections (else every stage) to the end."""
    order = [n for n in _stage_order(set(timings)) if n != "total"]
    _, first = _pipeline_stages()
    return processing_latency(timings, order, first if first in order else None)


def _stats(values: list[float]) -> dict[str, Any]:
    """n, p50, p95, max and mean of a sample; None for an empty one."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    return {
        "n": int(a.size),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


def _first(events: list[dict[str, Any]], type_: str, direction: str) -> dict[str, Any] | None:
    return next((e for e in events if e["type"] == type_ and e["direction"] == direction), None)


def _visit_row(fov: int, events: list[dict[str, Any]], outcome: str | None) -> dict[str, Any]:
    """What one visit received, did and took.

    ``processing_s`` is its own work from the detections to the alerts: the sum
    of its stage timings from the stage that waits for the detections on.
    ``queue_wait_s`` runs from its start event's arrival to its execution's
    start (its outcome's time less its ``total`` timing). ``end_to_end_s`` is
    what an outsider sees, first detection event to first alerts event, both
    as received, queue included.
    """
    start = _first(events, NEXT_VISIT, "in")
    body = start["body"] if start else {}
    det = _first(events, DIASOURCES_READY, "in")
    alerts = _first(events, ALERTS_READY, "out")
    done = _first(events, VISIT_DONE, "out")
    failed = _first(events, VISIT_FAILED, "out")
    counts = alerts["body"] if alerts else {}
    timings = done["body"].get("timings") if done else None
    started = None
    if timings and isinstance(timings.get("total"), int | float):
        started = done["received"] - timings["total"]  # type: ignore[index]
    return {
        "fov_id": fov,
        "mjd": body.get("mjd"),
        "ra": body.get("ra"),
        "dec": body.get("dec"),
        "filter": body.get("filter"),
        "radius": body.get("radius"),
        "outcome": outcome,
        "events": dict(Counter(e["type"] for e in events if e["direction"] == "in")),
        "start_received": start["received"] if start else None,
        "started": started,
        "detection_received": det["received"] if det else None,
        "alerts_received": alerts["received"] if alerts else None,
        "processing_s": _processing(timings) if timings else None,
        "queue_wait_s": (
            max(started - start["received"], 0.0) if started is not None and start else None
        ),
        "end_to_end_s": alerts["received"] - det["received"] if det and alerts else None,
        **{k: counts.get(k) for k in ("n_sources", "n_alerts", "n_new_objects", "n_moving")},
        "write_s": counts.get("write_s"),
        "timings": timings,
        "stored": None,
        "catalogue_objects": None,
        "failure": (
            {k: failed["body"].get(k) for k in ("stage", "hook", "rank", "error")}
            if failed
            else None
        ),
    }


def _visits(events: list[dict[str, Any]], outcomes: dict[int, str]) -> list[dict[str, Any]]:
    """Per visit rows, in observing order (mjd, then fov_id)."""
    by_fov: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        if e["fov_id"] is not None:
            by_fov.setdefault(int(e["fov_id"]), []).append(e)
    for fov in outcomes:
        by_fov.setdefault(fov, [])
    rows = [_visit_row(fov, evs, outcomes.get(fov)) for fov, evs in by_fov.items()]
    return sorted(rows, key=lambda r: (r["mjd"] is None, r["mjd"] or 0.0, r["fov_id"]))


# -- the database and the truth ---------------------------------------------------------------


def _database(storage: Storage, visits: list[dict[str, Any]]) -> dict[str, Any]:
    """Stored visits and catalogue size; fills visit counts the events lack.

    Each stored visit gets ``catalogue_objects``: the Objects in the database
    once its Store committed (see `catalogue_sizes`).
    """
    with storage.engine.connect() as conn:
        stored = {r.visit: r for r in conn.execute(select(db.visits)).all()}
        n_objects = int(conn.execute(select(func.count()).select_from(db.objects)).scalar() or 0)
    loads = preloads(storage)
    sizes = catalogue_sizes(list(stored.values()), loads, n_objects)
    for row in visits:
        rec = stored.get(row["fov_id"])
        row["stored"] = rec is not None
        if rec is None:
            continue
        row["catalogue_objects"] = sizes[row["fov_id"]]
        for k in ("n_sources", "n_alerts", "n_new_objects", "n_moving"):
            if row[k] is None:
                row[k] = int(getattr(rec, k))
    return {
        "url": storage.url,
        "visits_stored": len(stored),
        "objects": n_objects,
        "preloads": loads,
    }


def catalogue_sizes(stored: list[Any], loads: list[dict[str, Any]], n_objects: int) -> dict:
    """The Objects in the database once each stored visit's Store committed.

    Replayed from the Stores (``stored_at``, ``n_new_objects``, in the order
    they committed) and the catalogues loaded (``at``, ``objects``) up to the
    Objects in the database now: what the notes cannot place counts from the start.
    """
    steps = [(float(r.stored_at), 1, int(r.n_new_objects), int(r.visit)) for r in stored]
    steps += [(float(p["at"]), 0, int(p["objects"]), 0) for p in loads if "at" in p]
    size = n_objects - sum(n for _, _, n, _ in steps)
    out = {}
    for _, is_visit, n, visit in sorted(steps):
        size += n
        if is_visit:
            out[visit] = size
    return out


def _quality(storage: Storage, archives: list[Path]) -> dict[str, Any]:
    """The association quality of the stored visits against the archives' truth.

    Several archives are the nights of a survey: their truths and starting
    catalogues are taken together, and the figures are also given per night.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    truths, preloaded = [], [np.empty(0, np.int64)]
    for archive in archives:
        files = Archive(archive).files
        truth_path = files["truth"].get("diasources")
        if truth_path is None:
            raise ValueError(f"{archive}: no truth/diasources")
        truths.append(pq.read_table(truth_path))
        objects = files["catalogue_objects"]
        if objects is not None:
            ids = pq.read_table(objects, columns=["diaObjectId"])["diaObjectId"]
            preloaded.append(ids.to_numpy())
    truth = pa.concat_tables(truths)
    ids = truth["diaSourceId"].to_numpy()
    with storage.engine.connect() as conn:
        v = db.visits
        stored = conn.execute(select(v.c.visit, v.c.mjd).order_by(v.c.mjd)).all()
    visits = np.array([r.visit for r in stored], dtype="i8")
    nights = night_start(np.array([r.mjd for r in stored], dtype="f8"))
    q = storage.engine.dialect.identifier_preparer.quote
    sid, oid, ssid = (q(c) for c in ("diaSourceId", "diaObjectId", "ssObjectId"))
    # The id range keeps out earlier (catalogue) DIASources, whatever their visit
    # number. Only columns of the diaSourceId index are read: no row lookups in
    # a table of tens of millions; ssObjectId comes from the moving matches.
    lo, hi = (int(ids.min()), int(ids.max())) if ids.size else (0, -1)
    rows = storage.fetch_columns(
        f"SELECT {sid}, {oid} FROM diasources WHERE {sid} >= ? AND {sid} <= ?",
        (lo, hi),
        {"diaSourceId": "i", "diaObjectId": "i"},
        presize=False,
    )
    moving = storage.fetch_columns(
        f"SELECT {sid}, {ssid} FROM moving_matches", (), {"id": "i", "ss": "i"}
    )
    order = np.argsort(rows["diaSourceId"], kind="stable")
    ordered = rows["diaSourceId"][order]
    at = np.minimum(np.searchsorted(ordered, moving["id"]), max(len(ordered) - 1, 0))
    found = ordered[at] == moving["id"] if len(ordered) else np.zeros(0, bool)
    rows["ssObjectId"] = np.zeros(len(ordered), np.int64)
    rows["ssObjectId"][order[at[found]]] = moving["ss"][found]
    several = len(archives) > 1
    out = quality(rows, truth, np.concatenate(preloaded), visits, nights if several else None)
    return {"archive": ", ".join(str(a) for a in archives), **out}


# -- the report -------------------------------------------------------------------------------


def replayed_archives(replay: dict[str, Any] | None) -> list[str]:
    """The archives replayed into a run directory, in order, from its ``replay.json``."""
    replay = replay or {}
    found = replay.get("archives") or ([replay["archive"]] if replay.get("archive") else [])
    return [str(a) for a in found]


def night_of(replay: dict[str, Any] | None, visits: list[dict[str, Any]]) -> dict[str, Any]:
    """The night observed: its start (MJD, noon UT) and date (``dayObs``), and the run's name.

    From the replayed archives' manifests when there are some, else from the
    visits' MJDs (the noon-to-noon UT nights); None when neither says. A run
    of several nights gives the first's, and ``nights``: every night's start.
    """
    starts = []
    for archive in replayed_archives(replay):
        try:
            starts.append(float(Archive(archive).manifest["source"]["night_mjd"]))
        except (OSError, ValueError, KeyError, TypeError):
            starts = []
            break
    if not starts:
        mjds = [v["mjd"] for v in visits if isinstance(v.get("mjd"), int | float)]
        starts = [float(n) for n in np.unique(night_start(np.array(mjds)))] if mjds else []
    if not starts:
        return {"mjd": None, "date": None, "label": "night unknown", "nights": []}
    dates = [(MJD_EPOCH + timedelta(days=np.floor(m))).date().isoformat() for m in starts]
    if len(starts) == 1:
        label = f"night {dates[0]} (MJD {starts[0]:g})"
    else:
        label = (
            f"{len(starts)} nights {dates[0]} to {dates[-1]} (MJD {starts[0]:g} to {starts[-1]:g})"
        )
    return {"mjd": starts[0], "date": dates[0], "label": label, "nights": starts}


def mjd_to_datetime(mjd: float) -> datetime:
    """UTC time of an MJD (leap seconds ignored)."""
    return MJD_EPOCH + timedelta(days=float(mjd))


def _totals(visits: list[dict[str, Any]]) -> dict[str, int]:
    """DIASources, alerts, new Objects and moving-object matches of the visits done."""
    keys = ("n_sources", "n_alerts", "n_new_objects", "n_moving")
    return {k: sum(v[k] or 0 for v in visits if v["outcome"] == "done") for k in keys}


def summarize(
    run_dir: Path,
    events: list[dict[str, Any]],
    outcomes: dict[int, str],
    replay: dict[str, Any] | None,
) -> dict[str, Any]:
    """The figures that come from the journal alone (see `build_report`)."""
    visits = _visits(events, outcomes)
    received = [e["received"] for e in events]
    wall = max(received) - min(received) if received else 0.0
    n_done = sum(o == "done" for o in outcomes.values())
    timings: dict[str, list[float]] = {}
    for v in visits:
        for name, seconds in (v["timings"] or {}).items():
            timings.setdefault(name, []).append(float(seconds))
    return {
        "run_dir": str(run_dir),
        "run": "/".join(Path(run_dir).parts[-2:]),
        "night": night_of(replay, visits),
        "replay": replay,
        "events": {
            "in": dict(Counter(e["type"] for e in events if e["direction"] == "in")),
            "out": dict(Counter(e["type"] for e in events if e["direction"] == "out")),
            "expired": sum(e["expired"] for e in events),
        },
        "visits": {
            "n": len(visits),
            "done": n_done,
            "failed": sum(o == "failed" for o in outcomes.values()),
            "unfinished": sum(v["outcome"] is None for v in visits),
        },
        "wall": {
            "first": min(received) if received else None,
            "last": max(received) if received else None,
            "seconds": wall,
            "visits_per_minute": 60.0 * n_done / wall if wall > 0 else None,
        },
        "totals": _totals(visits),
        "latency": {
            kind: {
                "what": what,
                **_stats([v[f"{kind}_s"] for v in visits if v[f"{kind}_s"] is not None]),
            }
            for kind, what in LATENCY_KINDS.items()
        },
        "stages": {name: _stats(timings[name]) for name in _stage_order(set(timings))},
        "failures": [{"fov_id": v["fov_id"], **v["failure"]} for v in visits if v["failure"]],
        "per_visit": visits,
    }


def build_report(
    run_dir: str | Path,
    archive: str | Path | list[str | Path] | None = None,
    db_url: str | None = None,
) -> dict[str, Any]:
    """Gather the figures of a run directory into one JSON-able dict.

    Parameters
    ----------
    run_dir : str or Path
        The pipeline's run directory.
    archive : str or Path, or a list of them, optional
        Night archive(s) with truth, a survey's nights in order; by default
        those in ``replay.json``.
    db_url : str, optional
        The database; by default ``replay.json``'s, else ``RUN_DIR/nightpipe.sqlite``.

    Returns
    -------
    dict
        ``run_dir``, ``run`` (its short name), ``night``, ``replay``, ``events``,
        ``visits``, ``wall``, ``totals``, ``latency`` (``processing``,
        ``queue_wait`` and ``end_to_end``, each with n, p50, p95, max, mean),
        ``stages``, ``failures``, ``per_visit`` (each with
        ``catalogue_objects``, the Objects in the database once it was
        stored), ``database``, ``quality``, ``nights`` (`per_night`) and
        ``notes`` (what could not be reported, and why).

    Raises
    ------
    ReportError
        When the run directory has no journal.
    """
    run_dir = Path(run_dir).resolve()
    events, outcomes = _journal_rows(NightRunDir(run_dir).journal)
    replay = _read_replay(run_dir)
    report = summarize(run_dir, events, outcomes, replay)
    notes: list[str] = []
    db_url = db_url or (replay or {}).get("db_url")
    if archive is None or isinstance(archive, str | Path):
        archives = [Path(archive)] if archive else [Path(a) for a in replayed_archives(replay)]
    else:
        archives = [Path(a) for a in archive]

    database = qual = None
    if db_url is None and not (run_dir / SQLITE_NAME).is_file():
        notes.append("no database found: counts come from the events only")
    else:
        storage = None
        try:
            storage = open_storage(db_url, run_dir, None)
            database = _database(storage, report["per_visit"])
            report["totals"] = _totals(report["per_visit"])
        except (StorageError, SQLAlchemyError, sqlite3.Error, OSError) as exc:
            notes.append(f"database not read: {type(exc).__name__}: {exc}")
        if storage is not None and database is not None and archives:
            try:
                qual = _quality(storage, archives)
            except (SQLAlchemyError, sqlite3.Error, OSError, ValueError, KeyError) as exc:
                notes.append(f"quality not reported: {type(exc).__name__}: {exc}")
        if storage is not None:
            storage.close()
    if not archives:
        notes.append("no archive with truth: quality not reported")
    nights = per_night(report["per_visit"], qual)
    return {**report, "database": database, "quality": qual, "nights": nights, "notes": notes}


NIGHT_FIGURES = {
    "load": "load stage (s)",
    "store": "store stage (s)",
    "write": "database write (s)",
    "processing": "processing latency (s)",
}
"""The per-visit figures `per_night` gives p50 and p95 of."""


def _figure(v: dict[str, Any], name: str) -> float | None:
    """One visit's ``write`` or ``processing`` seconds, or its time in stage `name`; None if unknown."""
    return v[f"{name}_s"] if name in ("write", "processing") else (v["timings"] or {}).get(name)


def per_night(
    visits: list[dict[str, Any]], qual: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Per night (start MJD): visits done and failed, p50/p95 of `NIGHT_FIGURES`, catalogue size.

    ``catalogue_objects`` is the least and most Objects in the database after
    a Store of the night; ``quality`` the night's figures when the report has
    quality night by night.
    """
    by_night: dict[float, list[dict[str, Any]]] = {}
    for v in visits:
        if isinstance(v["mjd"], int | float):
            by_night.setdefault(float(night_start(v["mjd"])), []).append(v)
    quality_of = {q["night_mjd"]: q for q in (qual or {}).get("nights", [])}
    out = []
    for night, rows in sorted(by_night.items()):
        figures = {k: [_figure(v, k) for v in rows] for k in NIGHT_FIGURES}
        sizes = [v["catalogue_objects"] for v in rows if v["catalogue_objects"] is not None]
        out.append(
            {
                "night_mjd": night,
                "visits": len(rows),
                "done": sum(v["outcome"] == "done" for v in rows),
                "failed": sum(v["outcome"] == "failed" for v in rows),
                **{k: _stats([x for x in xs if x is not None]) for k, xs in figures.items()},
                "catalogue_objects": [min(sizes), max(sizes)] if sizes else None,
                "quality": quality_of.get(night),
            }
        )
    return out


# -- the gate ---------------------------------------------------------------------------------

THRESHOLDS = {"completeness": 0.99, "purity": 0.99, "mover_recovery": 0.95}
"""Default least fractions of ``replay --check``: what a simulated night holds."""


def gate(report: dict[str, Any], thresholds: dict[str, float] | None = None) -> list[str]:
    """Why a run fails the check: failed or unfinished visits, quality under its threshold.

    Over several nights, quality must hold over all of them and on each.

    ``thresholds`` maps ``completeness``, ``purity`` and ``mover_recovery`` to
    least fractions (missing keys take `THRESHOLDS`). A figure with nothing to
    count (None) passes. Without truth only the visits are checked; the
    report's notes say so. An empty list means the run passes.
    """
    limits = THRESHOLDS | (thresholds or {})
    v = report["visits"]
    out = []
    if v["failed"]:
        fovs = ", ".join(str(f["fov_id"]) for f in report["failures"][:10])
        out.append(f"{v['failed']} visit(s) failed: {fovs}")
    if v["unfinished"]:
        out.append(f"{v['unfinished']} visit(s) unfinished")
    q = report["quality"]
    if q is not None:
        parts = [("", q)] + [(f"night {n['night_mjd']:g}: ", n) for n in q.get("nights", [])]
        for where, figures in parts:
            rates = {
                "completeness": figures["completeness"]["all"],
                "purity": figures["purity"],
                "mover_recovery": figures["movers"]["recovery"],
            }
            for name, rate in rates.items():
                if rate["fraction"] is not None and rate["fraction"] < limits[name]:
                    out.append(
                        f"{where}{name.replace('_', ' ')} {rate['fraction']:.4f} ({rate['ok']} "
                        f"of {rate['n']}) is under {limits[name]:g}"
                    )
    return out


# -- text -------------------------------------------------------------------------------------


def _num(x: Any, fmt: str = ".3f") -> str:
    if x is None:
        return "-"
    return format(x, fmt) if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    """Aligned columns, indented; ``align`` has ``l`` or ``r`` per column (default: ``lrr...``)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    align = align or "l" + "r" * (len(header) - 1)

    def line(cells: list[str]) -> str:
        padded = [
            str(c).ljust(w) if a == "l" else str(c).rjust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return ("  " + "  ".join(padded)).rstrip()

    return [line(header), *(line(r) for r in rows)]


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"


def _visit_lines(visits: list[dict[str, Any]]) -> list[str]:
    shown = visits
    title = "visits"
    if len(visits) > MAX_VISIT_ROWS:
        ranked = sorted(
            visits,
            key=lambda v: (v["outcome"] != "failed", -(v["end_to_end_s"] or -1.0)),
        )
        keep = {v["fov_id"] for v in ranked[:MAX_VISIT_ROWS]}
        shown = [v for v in visits if v["fov_id"] in keep]
        title = f"visits ({len(shown)} of {len(visits)}: failed and slowest; --json for all)"
    header = ["fov_id", "mjd", "filter", "sources", "alerts", "new", "moving", "proc s"]
    header += ["queue s", "e2e s", "total s", "outcome"]
    rows = [
        [
            str(v["fov_id"]),
            _num(v["mjd"], ".5f"),
            v["filter"] or "-",
            _num(v["n_sources"]),
            _num(v["n_alerts"]),
            _num(v["n_new_objects"]),
            _num(v["n_moving"]),
            _num(v["processing_s"]),
            _num(v["queue_wait_s"]),
            _num(v["end_to_end_s"]),
            _num((v["timings"] or {}).get("total")),
            v["outcome"] or "unfinished",
        ]
        for v in shown
    ]
    return [title, *_table(header, rows, "lrlrrrrrrrrl")]


def night_lines(nights: list[dict[str, Any]]) -> list[str]:
    """The per-night table: visits, p50/p95 of load, store and processing latency, quality."""
    header = ["night", "visits", "failed"]
    for name in NIGHT_FIGURES:
        header += [f"{name} p50", f"{name} p95"]
    header += ["Objects in db", "compl.", "purity", "movers"]

    def pct(r: dict[str, Any] | None) -> str:
        return "-" if r is None or r["fraction"] is None else f"{100 * r['fraction']:.2f}%"

    rows = []
    for n in nights:
        q = n["quality"]
        size = n["catalogue_objects"]
        rows.append(
            [
                f"{n['night_mjd']:g}",
                str(n["visits"]),
                str(n["failed"]),
                *(_num(n[k][p]) for k in NIGHT_FIGURES for p in ("p50", "p95")),
                "-" if size is None else f"{size[0]}-{size[1]}",
                pct(q and q["completeness"]["all"]),
                pct(q and q["purity"]),
                pct(q and q["movers"]["recovery"]),
            ]
        )
    return ["nights (stage times and latency in s)", *_table(header, rows)]


def quality_lines(q: dict[str, Any]) -> list[str]:
    """The quality section of the report as text lines."""
    c, m, new, tr = q["completeness"], q["movers"], q["new_objects"], q["transients"]
    done, skipped = q["processed"], q["not_processed"]

    def rate(label: str, r: dict[str, Any]) -> list[str]:
        frac = "n/a" if r["fraction"] is None else f"{100 * r['fraction']:.2f}%"
        return [label, str(r["ok"]), str(r["n"]), frac]

    rows = [
        rate("completeness (true links made)", c["all"]),
        rate("  static", c["static"]),
        rate("  variable", c["variable"]),
        rate("purity (links made that are true)", q["purity"]),
        rate("mover recovery (predicted movers)", m["recovery"]),
        rate("transient later detections linked", tr["later"]),
    ]
    kinds = {k.replace("_", " "): n for k, n in new["by_kind"].items() if n}
    wrong = {k: n for k, n in q["purity"]["wrong_by_kind"].items() if n}
    return [
        f"quality against the truth of {q['archive']}",
        f"  {done['visits']} visits, {done['diasources']} DIASources processed"
        f" ({done['missing_in_db']} missing from the database);"
        f" not processed: {skipped['visits']} visits, {skipped['diasources']} DIASources",
        *_table(["", "ok", "of", "fraction"], rows),
        f"  wrong links by truth kind: {_counts(wrong)}",
        f"  movers matched wrongly {m['matched_wrongly']};"
        f" non-movers taken as movers {m['non_movers_matched']}",
        f"  new Objects {new['n']}: {_counts(kinds)}",
        f"  false new Objects {new['false']} (of preloaded Objects {new['false_preloaded']},"
        f" of predicted movers {new['false_predicted_mover']})",
    ]


def format_report(report: dict[str, Any]) -> str:
    """The report as a compact text summary: a few lines and tables."""
    v, w, tot = report["visits"], report["wall"], report["totals"]
    out = [f"nightpipe report: {report['run_dir']}, {report['night']['label']}"]
    if report["replay"]:
        r = report["replay"]
        out.append(f"replay of {r.get('archive')} ({r.get('ranks')} ranks, speed {r.get('speed')})")
    out += [
        f"visits: {v['done']} done, {v['failed']} failed, {v['unfinished']} unfinished;"
        f" wall {w['seconds']:.1f} s (first to last event);"
        f" {_num(w['visits_per_minute'], '.1f')} visits/min",
        f"events in: {_counts(report['events']['in'])}",
        f"events out: {_counts(report['events']['out'])}",
        f"totals: {tot['n_sources']} DIASources, {tot['n_alerts']} alerts,"
        f" {tot['n_new_objects']} new Objects, {tot['n_moving']} moving-object matches",
        "",
        "latency (s)",
    ]
    lat_rows = [
        [s["what"], str(s["n"]), _num(s["p50"]), _num(s["p95"]), _num(s["max"])]
        for s in report["latency"].values()
    ]
    out += _table(["", "n", "p50", "p95", "max"], lat_rows)
    out += [
        "",
        "stage timings (s)",
    ]
    stage_rows = [
        [name, str(s["n"]), _num(s["p50"]), _num(s["p95"]), _num(s["max"])]
        for name, s in report["stages"].items()
    ]
    out += _table(["stage", "n", "p50", "p95", "max"], stage_rows)
    if len(report.get("nights", [])) > 1:
        out += ["", *night_lines(report["nights"])]
    out += ["", *_visit_lines(report["per_visit"])]
    if report["failures"]:
        rows = [
            [
                str(f["fov_id"]),
                f["stage"],
                f["hook"],
                str(f["rank"]),
                str(f["error"]).split("\n")[0][:80],
            ]
            for f in report["failures"]
        ]
        out += [
            "",
            "failures",
            *_table(["fov_id", "stage", "hook", "rank", "error"], rows, "lllrl"),
        ]
    if report["quality"]:
        out += ["", *quality_lines(report["quality"])]
    if report["notes"]:
        out += ["", *(f"note: {n}" for n in report["notes"])]
    return "\n".join(out)


# -- plots ------------------------------------------------------------------------------------


def _no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)


def _names(report: dict[str, Any]) -> str:
    """The night and the run, for a plot's title."""
    return f"{report['night']['label']}, run {report['run']}"


def _sky_plot(report: dict[str, Any], path: Path) -> None:
    """Visits per HEALPix pixel on the whole sky, and the fields zoomed; failed visits marked."""
    import healpy as hp
    import matplotlib.pyplot as plt

    visits = [v for v in report["per_visit"] if v["ra"] is not None and v["dec"] is not None]
    counts = np.zeros(hp.nside2npix(SKY_NSIDE))
    for v in visits:
        vec = hp.ang2vec(v["ra"], v["dec"], lonlat=True)
        radius = np.radians(v["radius"] or DEFAULT_FOV_RADIUS_DEG)
        counts[hp.query_disc(SKY_NSIDE, vec, radius, inclusive=True)] += 1
    fig = plt.figure(figsize=(15, 6.5))
    with warnings.catch_warnings():  # healpy's own use of deprecated colormap setters
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        hp.mollview(
            np.where(counts > 0, counts, hp.UNSEEN),
            fig=fig.number,
            sub=(1, 2, 1),
            title=f"visits per HEALPix pixel (nside {SKY_NSIDE}), RA/Dec, RA grows to the left",
            unit="visits covering the pixel",
            cmap="viridis",
        )
    hp.graticule(dpar=30, dmer=60, alpha=0.4)
    _mollweide_labels(hp)
    if visits:
        _fields(fig, visits)
    else:
        _no_data(fig.add_subplot(1, 2, 2), "visits")
    fig.suptitle(f"Sky coverage: {_names(report)}", fontsize=13)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _mollweide_labels(hp: Any) -> None:
    """RA along the equator, Dec along the left rim, of healpy's current Mollweide panel."""
    style = {"lonlat": True, "fontsize": 8, "color": "0.15"}
    for ra in (0, 60, 120, 240, 300):
        hp.projtext(ra, 2.0, f"RA {ra}\N{DEGREE SIGN}", ha="center", va="bottom", **style)
    for dec in (-60, -30, 0, 30, 60):
        text = f"{dec:+d}\N{DEGREE SIGN} " if dec else "Dec 0\N{DEGREE SIGN} "
        hp.projtext(179.99, dec, text, ha="right", va="center", **style)


def _circle(ra: float, dec: float, radius: float, n: int = 73) -> tuple[np.ndarray, np.ndarray]:
    """RA and Dec (deg) of the small circle of `radius` deg around (`ra`, `dec`)."""
    a, d, r = np.radians(ra), np.radians(dec), np.radians(radius)
    theta = np.linspace(0.0, 2 * np.pi, n)
    sin_d = np.sin(d) * np.cos(r) + np.cos(d) * np.sin(r) * np.cos(theta)
    out_d = np.arcsin(np.clip(sin_d, -1.0, 1.0))
    out_a = a + np.arctan2(np.sin(theta) * np.sin(r) * np.cos(d), np.cos(r) - np.sin(d) * sin_d)
    return np.degrees(out_a), np.degrees(out_d)


def _fields(fig: Any, visits: list[dict[str, Any]]) -> None:
    """Field outlines and centres in a zenithal equal-area projection about their mean.

    Equal scales in every direction: a round field of view looks round, at
    any Dec (the pole too), with RA/Dec grid lines and labels drawn on it.
    """
    import matplotlib.pyplot as plt
    from astropy.wcs import WCS
    from matplotlib.axes import Axes
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    ra = np.array([v["ra"] for v in visits], dtype=float)
    dec = np.array([v["dec"] for v in visits], dtype=float)
    mjd = np.array([v["mjd"] if v["mjd"] is not None else np.nan for v in visits], dtype=float)
    hours = (mjd - np.nanmin(mjd)) * 24.0 if np.isfinite(mjd).any() else np.zeros(ra.size)
    failed = np.array([v["outcome"] == "failed" for v in visits])
    x, y = np.radians(ra), np.radians(dec)
    mean = np.sum([np.cos(y) * np.cos(x), np.cos(y) * np.sin(x), np.sin(y)], axis=1)
    ra0 = float(np.degrees(np.arctan2(mean[1], mean[0])) % 360.0)
    dec0 = float(np.degrees(np.arctan2(mean[2], np.hypot(mean[0], mean[1]))))
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---ZEA", "DEC--ZEA"]
    wcs.wcs.crval = [ra0, dec0]
    wcs.wcs.crpix = [0.0, 0.0]
    wcs.wcs.cdelt = [-1.0, 1.0]  # 1 deg per unit; RA grows to the left
    ax = fig.add_subplot(1, 2, 2, projection=wcs)
    world = ax.get_transform("world")
    cmap = plt.get_cmap("plasma")
    span = max(float(np.nanmax(hours)), 1e-9)
    px, py = [], []
    for r, d, h, v in zip(ra, dec, hours, visits, strict=True):
        cra, cdec = _circle(r, d, v["radius"] or DEFAULT_FOV_RADIUS_DEG)
        ax.plot(cra, cdec, color=cmap(h / span), lw=0.8, alpha=0.6, transform=world)
        cx, cy = wcs.wcs_world2pix(cra, cdec, 0)
        px.append(cx)
        py.append(cy)
    sc = ax.scatter(ra, dec, c=hours, cmap=cmap, s=20, zorder=3, transform=world)
    if failed.any():
        ax.scatter(
            ra[failed],
            dec[failed],
            marker="x",
            color="red",
            s=80,
            zorder=4,
            label="failed",
            transform=world,
        )
        ax.legend(loc="best", fontsize=8)
    allx, ally = np.concatenate(px), np.concatenate(py)
    pad = 0.05 * max(np.ptp(allx), np.ptp(ally), 1.0)
    ax.set_xlim(allx.min() - pad, allx.max() + pad)
    ax.set_ylim(ally.min() - pad, ally.max() + pad)
    ax.set_aspect("equal")
    lon, lat = ax.coords
    lon.set_format_unit("deg")
    lon.set_major_formatter("d.d")
    lat.set_major_formatter("d.d")
    lon.set_axislabel("RA (deg)")
    lat.set_axislabel("Dec (deg)")
    ax.coords.grid(color="0.5", alpha=0.35, linestyle="solid")
    first = mjd_to_datetime(float(np.nanmin(mjd))) if np.isfinite(mjd).any() else None
    since = f" (UT {first:%H:%M})" if first else ""
    cax = make_axes_locatable(ax).append_axes("right", size="4%", pad=0.15, axes_class=Axes)
    fig.colorbar(sc, cax=cax, label=f"hours since the first visit{since}")
    ax.set_title(
        f"fields of view about RA {ra0:.1f}, Dec {dec0:+.1f} (equal-area, equal scales);"
        " failed visits x",
        fontsize=10,
    )


def _visit_times(rows: list[dict[str, Any]]) -> tuple[list[datetime], str]:
    """When each visit was observed (its MJD), else when its detections arrived; the label."""
    if all(v["mjd"] is not None for v in rows):
        return [mjd_to_datetime(v["mjd"]) for v in rows], "visit start (UT)"
    t = [v["detection_received"] or v["start_received"] or 0.0 for v in rows]
    return [datetime.fromtimestamp(x, UTC) for x in t], "detections received (UT)"


def _latency_plot(report: dict[str, Any], path: Path) -> None:
    """Each visit's processing latency, and apart from it its queue wait, against UT."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    rows = [v for v in report["per_visit"] if v["outcome"] is not None]
    times, label = _visit_times(rows)
    at = dict(zip([v["fov_id"] for v in rows], times, strict=True))
    done = [v for v in rows if v["processing_s"] is not None]
    if done:
        top.plot([at[v["fov_id"]] for v in done], [v["processing_s"] for v in done], "o", ms=4)
        for q, style in (("p50", "--"), ("p95", ":")):
            value = report["latency"]["processing"][q]
            top.axhline(value, ls=style, color="grey", label=f"{q} {value:.3g} s")
    else:
        _no_data(top, "processing latencies")
    waited = [v for v in rows if v["queue_wait_s"] is not None]
    seen = [v for v in rows if v["end_to_end_s"] is not None]
    if waited:
        x = [at[v["fov_id"]] for v in waited]
        bottom.plot(x, [v["queue_wait_s"] for v in waited], "s", ms=4, label="queue wait")
    if seen:
        bottom.plot(
            [at[v["fov_id"]] for v in seen],
            [v["end_to_end_s"] for v in seen],
            "o",
            ms=5,
            mfc="none",
            color="0.45",
            label="end to end (detections in -> alerts out)",
        )
    if not (waited or seen):
        _no_data(bottom, "queue waits")
    failed = [v for v in rows if v["outcome"] == "failed"]
    for ax in (top, bottom):
        for i, v in enumerate(failed):
            ax.axvline(at[v["fov_id"]], color="red", alpha=0.4, lw=1, label=None if i else "failed")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    top.set_ylabel("processing latency (s)")
    top.set_title("processing: detections -> alerts, the visit's own work (no queue)", fontsize=10)
    bottom.set_ylabel("waiting (s)")
    bottom.set_title(
        "queue: start event -> execution start; end to end as seen outside", fontsize=10
    )
    bottom.set_xlabel(label)
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    epoch = mdates.date2num(MJD_EPOCH)
    mjd_axis = top.secondary_xaxis("top", functions=(lambda d: d - epoch, lambda m: m + epoch))
    mjd_axis.set_xlabel("MJD")
    mjd_axis.xaxis.set_major_formatter(plt.FormatStrFormatter("%.3f"))
    fig.suptitle(f"Latency per visit: {_names(report)}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stages_plot(report: dict[str, Any], path: Path) -> None:
    """Stage times: stacked per visit, and their spread per stage."""
    import matplotlib.pyplot as plt

    names = [n for n in report["stages"] if n != "total"]
    rows = [v for v in report["per_visit"] if v["timings"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=(3, 2))
    if rows and names:
        x = np.arange(len(rows))
        bottom = np.zeros(len(rows))
        for name in names:
            h = np.array([v["timings"].get(name, 0.0) for v in rows])
            left.bar(x, h, bottom=bottom, label=name, width=0.8)
            bottom += h
        total = np.array([v["timings"].get("total", np.nan) for v in rows])
        rest = np.nan_to_num(np.maximum(total - bottom, 0.0))
        left.bar(
            x,
            rest,
            bottom=bottom,
            label="in flight, not in a stage (event waits, ordered section)",
            width=0.8,
            color="lightgrey",
            hatch="//",
            edgecolor="grey",
        )
        step = max(1, len(rows) // 15)
        left.set_xticks(x[::step], [str(v["fov_id"]) for v in rows[::step]], rotation=45)
        left.legend(fontsize=8)
        samples = [[v["timings"][n] for v in rows if n in v["timings"]] for n in names]
        right.boxplot(samples, showfliers=True)
        right.set_xticks(np.arange(1, len(names) + 1), names, rotation=30)
    else:
        _no_data(left, "stage timings")
        _no_data(right, "stage timings")
    left.set_xlabel("visit (fov_id), observing order")
    left.set_ylabel("time (s)")
    left.set_title("stage times per visit (stacked), from its start; queue wait not shown")
    right.set_xlabel("stage")
    right.set_ylabel("time (s)")
    right.set_title("stage time spread over the night")
    fig.suptitle(f"Stage times: {_names(report)}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_STORE_PANELS = (
    ("write", "database write (s)", "write: the visit's transaction, once the writer takes it"),
    ("store", "store stage (s)", "store stage: the write and the wait behind earlier visits"),
    ("load", "load stage (s)", "load: the field's chunks into the Slices' memory"),
)
"""The panels of the store plot: figure, axis label, title."""


def _store_plot(report: dict[str, Any], path: Path) -> None:
    """Each visit's write, store and load times against the Objects in the database, by night."""
    import matplotlib.pyplot as plt

    rows = [v for v in report["per_visit"] if v["catalogue_objects"] is not None]
    fig, axes = plt.subplots(1, len(_STORE_PANELS), figsize=(18, 5), sharex=True)
    nights = sorted({float(night_start(v["mjd"])) for v in rows if v["mjd"] is not None})
    cmap = plt.get_cmap("viridis")
    for ax, (name, label, title) in zip(axes, _STORE_PANELS, strict=True):
        shown = [v for v in rows if _figure(v, name) is not None and v["mjd"] is not None]
        if not shown:
            _no_data(ax, f"{name} times with a catalogue size")
        for i, night in enumerate(nights):
            mine = [v for v in shown if night_start(v["mjd"]) == night]
            if mine:
                ys = [_figure(v, name) for v in mine]
                ax.plot(
                    [v["catalogue_objects"] for v in mine],
                    ys,
                    "o",
                    ms=3,
                    alpha=0.7,
                    color=cmap(i / max(len(nights) - 1, 1)),
                    label=f"night {night:g} (p95 {np.percentile(ys, 95):.3g} s)",
                )
        ax.set_xlabel("Objects in the database when the visit was stored")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"Write, store and load time against the catalogue's size: {_names(report)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(
    run_dir: str | Path, report: dict[str, Any], out_dir: str | Path | None = None
) -> list[Path]:
    """Write the sky map, the latency, stage-time and store-time plots as PNGs.

    Parameters
    ----------
    run_dir : str or Path
        The run directory.
    report : dict
        From `build_report`.
    out_dir : str or Path, optional
        Where to write; ``RUN_DIR/report`` by default.

    Returns
    -------
    list of Path
        ``sky.png``, ``latency.png``, ``stages.png``, ``store.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir) if out_dir is not None else NightRunDir(run_dir).report_dir
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "sky": _sky_plot,
        "latency": _latency_plot,
        "stages": _stages_plot,
        "store": _store_plot,
    }
    paths = []
    for name, plot in plots.items():
        paths.append(out / f"{name}.png")
        plot(report, paths[-1])
    return paths


def write_json(run_dir: str | Path, report: dict[str, Any]) -> Path:
    """Write the report to ``RUN_DIR/report.json`` (atomically); its path."""
    path = NightRunDir(run_dir).report_json
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(path)
    return path


# -- command line -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Print the report of ``args.run_dir`` and write its plots; the exit code."""
    try:
        report = build_report(args.run_dir, args.archive, args.db)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plots = [] if args.no_plots else write_plots(args.run_dir, report)
    report["plots"] = [str(p) for p in plots]
    write_json(args.run_dir, report)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(format_report(report))
    if plots:
        print("\nplots:\n" + "\n".join(f"  {p}" for p in plots))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``nightpipe report RUN_DIR [--archive A] [--db URL] [--json] [--no-plots]``."""
    from association.cli.nights import add_report_arguments

    parser = argparse.ArgumentParser(prog="nightpipe report", description=__doc__)
    add_report_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
