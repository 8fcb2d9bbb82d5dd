"""The report of a night's run: events, timings, latency, counts, failures, quality, plots.

Everything comes from the run directory: the journal (events, with the times
the master journaled them, and outcomes), the database, and ``replay.json``
whose archive holds the truth of a simulated night.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tomllib
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from association.nights.quality import quality
from association.storage import tables as db
from events.archive import Archive
from events.types import ALERTS_READY, DIASOURCES_READY, NEXT_VISIT, VISIT_DONE, VISIT_FAILED

JOURNAL = "journal.sqlite"
REPLAY = "replay.json"
REPORT_DIR = "report"
PIPELINE = Path(__file__).parents[1] / "pipelines" / "association.toml"
SKY_NSIDE = 32
DEFAULT_RADIUS = 1.75  # deg, a visit's field of view when its event gives none
MAX_VISIT_ROWS = 20  # in the text; the JSON has every visit


class ReportError(RuntimeError):
    """The run directory cannot be reported on; the message says why."""


# -- reading the run --------------------------------------------------------------------------


def _journal_rows(path: Path) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Every journaled event (body decoded) in order, and every visit's outcome."""
    if not path.is_file():
        raise ReportError(f"{path}: no journal; is {path.parent} a run directory?")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT type, fov_id, time, received, direction, json, expired FROM events ORDER BY seq"
        ).fetchall()
        outcomes = dict(conn.execute("SELECT fov_id, outcome FROM outcomes").fetchall())
    finally:
        conn.close()
    events = [
        {
            "type": t,
            "fov_id": fov,
            "time": sent,
            "received": received,
            "direction": direction,
            "body": json.loads(text).get("body") or {},
            "expired": bool(expired),
        }
        for t, fov, sent, received, direction, text, expired in rows
    ]
    return events, {int(k): str(v) for k, v in outcomes.items()}


def _read_replay(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / REPLAY
    return json.loads(path.read_text()) if path.is_file() else None


def _stage_order(names: set[str]) -> list[str]:
    """Stage names in pipeline order (the shipped association pipeline), ``total`` last."""
    try:
        known = [s["name"] for s in tomllib.loads(PIPELINE.read_text())["stages"]]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        known = []
    first = [n for n in known if n in names]
    rest = sorted(names - set(first) - {"total"})
    return first + rest + (["total"] if "total" in names else [])


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
    """What one visit received, did and took; latency is first detection to first alerts."""
    start = _first(events, NEXT_VISIT, "in")
    body = start["body"] if start else {}
    det = _first(events, DIASOURCES_READY, "in")
    alerts = _first(events, ALERTS_READY, "out")
    done = _first(events, VISIT_DONE, "out")
    failed = _first(events, VISIT_FAILED, "out")
    counts = alerts["body"] if alerts else {}
    latency = alerts["received"] - det["received"] if det and alerts else None
    return {
        "fov_id": fov,
        "mjd": body.get("mjd"),
        "ra": body.get("ra"),
        "dec": body.get("dec"),
        "filter": body.get("filter"),
        "radius": body.get("radius"),
        "outcome": outcome,
        "events": dict(Counter(e["type"] for e in events if e["direction"] == "in")),
        "detection_received": det["received"] if det else None,
        "alerts_received": alerts["received"] if alerts else None,
        "latency_s": latency,
        **{k: counts.get(k) for k in ("n_sources", "n_alerts", "n_new_objects", "n_moving")},
        "timings": done["body"].get("timings") if done else None,
        "stored": None,
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


def _engine(run_dir: Path, db_url: str | None) -> Engine | None:
    """The run's database engine, or None when there is none."""
    if db_url is None and not (run_dir / db.SQLITE_NAME).is_file():
        return None
    return db.make_engine(db_url, run_dir)


def _database(engine: Engine, visits: list[dict[str, Any]]) -> dict[str, Any]:
    """Stored visits and catalogue size; fills visit counts the events lack."""
    with engine.connect() as conn:
        stored = {r.visit: r for r in conn.execute(select(db.visits)).all()}
        n_objects = conn.execute(select(func.count()).select_from(db.objects)).scalar()
    for row in visits:
        rec = stored.get(row["fov_id"])
        row["stored"] = rec is not None
        if rec is None:
            continue
        for k in ("n_sources", "n_alerts", "n_new_objects", "n_moving"):
            if row[k] is None:
                row[k] = int(getattr(rec, k))
    return {
        "url": engine.url.render_as_string(hide_password=True),
        "visits_stored": len(stored),
        "objects": int(n_objects or 0),
    }


def _quality(engine: Engine, archive: Path) -> dict[str, Any]:
    """The association quality of the stored visits against the archive's truth."""
    import pyarrow.parquet as pq

    files = Archive(archive).files
    truth_path = files["truth"].get("diasources")
    if truth_path is None or files["catalogue_objects"] is None:
        raise ValueError(f"{archive}: no truth/diasources or catalogue objects")
    truth = pq.read_table(truth_path)
    preloaded = pq.read_table(files["catalogue_objects"], columns=["diaObjectId"])
    ids = truth["diaSourceId"].to_numpy()
    with engine.connect() as conn:
        stored = conn.execute(select(db.visits.c.visit).order_by(db.visits.c.mjd)).scalars()
        visits = np.fromiter(stored, dtype="i8")
    q = engine.dialect.identifier_preparer.quote
    sid, oid, ssid = (q(c) for c in ("diaSourceId", "diaObjectId", "ssObjectId"))
    # The id range keeps out earlier (catalogue) DIASources, whatever their visit
    # number. Only columns of the diaSourceId index are read: no row lookups in
    # a table of tens of millions; ssObjectId comes from the moving matches.
    lo, hi = (int(ids.min()), int(ids.max())) if ids.size else (0, -1)
    rows = db.fetch_columns(
        engine,
        f"SELECT {sid}, {oid} FROM diasources WHERE {sid} >= ? AND {sid} <= ?",
        (lo, hi),
        {"diaSourceId": "i", "diaObjectId": "i"},
        presize=False,
    )
    moving = db.fetch_columns(
        engine, f"SELECT {sid}, {ssid} FROM moving_matches", (), {"id": "i", "ss": "i"}
    )
    order = np.argsort(rows["diaSourceId"], kind="stable")
    ordered = rows["diaSourceId"][order]
    at = np.minimum(np.searchsorted(ordered, moving["id"]), max(len(ordered) - 1, 0))
    found = ordered[at] == moving["id"] if len(ordered) else np.zeros(0, bool)
    rows["ssObjectId"] = np.zeros(len(ordered), np.int64)
    rows["ssObjectId"][order[at[found]]] = moving["ss"][found]
    out = quality(rows, truth, preloaded["diaObjectId"].to_numpy(), visits)
    return {"archive": str(archive), **out}


# -- the report -------------------------------------------------------------------------------


def build_report(
    run_dir: str | Path, archive: str | Path | None = None, db_url: str | None = None
) -> dict[str, Any]:
    """Gather the figures of a run directory into one JSON-able dict.

    Parameters
    ----------
    run_dir : str or Path
        The pipeline's run directory.
    archive : str or Path, optional
        Night archive with truth; by default the one in ``replay.json``.
    db_url : str, optional
        The database; by default ``replay.json``'s, else ``RUN_DIR/nightpipe.sqlite``.

    Returns
    -------
    dict
        ``run_dir``, ``replay``, ``events``, ``visits``, ``wall``, ``totals``,
        ``latency``, ``stages``, ``failures``, ``per_visit``, ``database``,
        ``quality`` and ``notes`` (what could not be reported, and why).

    Raises
    ------
    ReportError
        When the run directory has no journal.
    """
    run_dir = Path(run_dir).resolve()
    events, outcomes = _journal_rows(run_dir / JOURNAL)
    replay = _read_replay(run_dir)
    notes: list[str] = []
    visits = _visits(events, outcomes)
    db_url = db_url or (replay or {}).get("db_url")
    archive = archive or (replay or {}).get("archive")

    database = qual = None
    engine = _engine(run_dir, db_url)
    if engine is None:
        notes.append("no database found: counts come from the events only")
    else:
        try:
            database = _database(engine, visits)
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            notes.append(f"database not read: {type(exc).__name__}: {exc}")
        if database is not None and archive is not None:
            try:
                qual = _quality(engine, Path(archive))
            except (SQLAlchemyError, sqlite3.Error, OSError, ValueError, KeyError) as exc:
                notes.append(f"quality not reported: {type(exc).__name__}: {exc}")
        engine.dispose()
    if archive is None:
        notes.append("no archive with truth: quality not reported")

    received = [e["received"] for e in events]
    wall = max(received) - min(received) if received else 0.0
    n_done = sum(o == "done" for o in outcomes.values())
    timings: dict[str, list[float]] = {}
    for v in visits:
        for name, seconds in (v["timings"] or {}).items():
            timings.setdefault(name, []).append(float(seconds))
    done_rows = [v for v in visits if v["outcome"] == "done"]
    return {
        "run_dir": str(run_dir),
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
        "totals": {
            k: sum(v[k] or 0 for v in done_rows)
            for k in ("n_sources", "n_alerts", "n_new_objects", "n_moving")
        },
        "latency": {
            "from": f"{DIASOURCES_READY} received",
            "to": f"{ALERTS_READY} received",
            **_stats([v["latency_s"] for v in visits if v["latency_s"] is not None]),
        },
        "stages": {name: _stats(timings[name]) for name in _stage_order(set(timings))},
        "failures": [{"fov_id": v["fov_id"], **v["failure"]} for v in visits if v["failure"]],
        "per_visit": visits,
        "database": database,
        "quality": qual,
        "notes": notes,
    }


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
            key=lambda v: (v["outcome"] != "failed", -(v["latency_s"] or -1.0)),
        )
        keep = {v["fov_id"] for v in ranked[:MAX_VISIT_ROWS]}
        shown = [v for v in visits if v["fov_id"] in keep]
        title = f"visits ({len(shown)} of {len(visits)}: failed and slowest; --json for all)"
    header = ["fov_id", "mjd", "filter", "sources", "alerts", "new", "moving", "latency s"]
    header += ["total s", "outcome"]
    rows = [
        [
            str(v["fov_id"]),
            _num(v["mjd"], ".5f"),
            v["filter"] or "-",
            _num(v["n_sources"]),
            _num(v["n_alerts"]),
            _num(v["n_new_objects"]),
            _num(v["n_moving"]),
            _num(v["latency_s"]),
            _num((v["timings"] or {}).get("total")),
            v["outcome"] or "unfinished",
        ]
        for v in shown
    ]
    return [title, *_table(header, rows, "lrlrrrrrrl")]


def _quality_lines(q: dict[str, Any]) -> list[str]:
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
    v, w, lat, tot = report["visits"], report["wall"], report["latency"], report["totals"]
    out = [f"nightpipe report: {report['run_dir']}"]
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
        f"latency, {lat['from']} -> {lat['to']} (s): n {lat['n']}, p50 {_num(lat['p50'])},"
        f" p95 {_num(lat['p95'])}, max {_num(lat['max'])}",
        "",
        "stage timings (s)",
    ]
    stage_rows = [
        [name, str(s["n"]), _num(s["p50"]), _num(s["p95"]), _num(s["max"])]
        for name, s in report["stages"].items()
    ]
    out += _table(["stage", "n", "p50", "p95", "max"], stage_rows)
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
        out += ["", *_quality_lines(report["quality"])]
    if report["notes"]:
        out += ["", *(f"note: {n}" for n in report["notes"])]
    return "\n".join(out)


# -- plots ------------------------------------------------------------------------------------


def _no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)


def _sky_plot(report: dict[str, Any], path: Path) -> None:
    """Visits per HEALPix pixel on the whole sky, and the fields zoomed; failed visits marked."""
    import healpy as hp
    import matplotlib.pyplot as plt

    visits = [v for v in report["per_visit"] if v["ra"] is not None and v["dec"] is not None]
    counts = np.zeros(hp.nside2npix(SKY_NSIDE))
    for v in visits:
        vec = hp.ang2vec(v["ra"], v["dec"], lonlat=True)
        radius = np.radians(v["radius"] or DEFAULT_RADIUS)
        counts[hp.query_disc(SKY_NSIDE, vec, radius, inclusive=True)] += 1
    fig = plt.figure(figsize=(14, 6))
    with warnings.catch_warnings():  # healpy's own use of deprecated colormap setters
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        hp.mollview(
            np.where(counts > 0, counts, hp.UNSEEN),
            fig=fig.number,
            sub=(1, 2, 1),
            title=f"visits per HEALPix pixel (nside {SKY_NSIDE}, RING), RA/Dec",
            unit="visits covering the pixel",
            cmap="viridis",
        )
    hp.graticule(dpar=30, dmer=60, alpha=0.4)
    ax = fig.add_subplot(1, 2, 2)
    if visits:
        _fields(ax, visits)
    else:
        _no_data(ax, "visits")
    ax.set_xlabel("RA (deg)")
    ax.set_ylabel("Dec (deg)")
    ax.set_title("fields of view, coloured by time; failed visits x")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _fields(ax: Any, visits: list[dict[str, Any]]) -> None:
    """Field outlines and centres around their mean position, RA growing to the left."""
    import matplotlib.pyplot as plt

    ra = np.array([v["ra"] for v in visits], dtype=float)
    dec = np.array([v["dec"] for v in visits], dtype=float)
    mjd = np.array([v["mjd"] if v["mjd"] is not None else np.nan for v in visits], dtype=float)
    hours = (mjd - np.nanmin(mjd)) * 24.0 if np.isfinite(mjd).any() else np.zeros(ra.size)
    failed = np.array([v["outcome"] == "failed" for v in visits])
    x, y = np.radians(ra), np.radians(dec)
    mean = np.sum([np.cos(y) * np.cos(x), np.cos(y) * np.sin(x)], axis=1)
    ra0 = np.degrees(np.arctan2(mean[1], mean[0])) % 360.0
    unwrap = ra0 + (ra - ra0 + 180.0) % 360.0 - 180.0  # RA continuous across 0/360
    theta = np.linspace(0.0, 2 * np.pi, 73)
    cmap = plt.get_cmap("plasma")
    span = max(float(np.nanmax(hours)), 1e-9)
    for r, d, h, v in zip(unwrap, dec, hours, visits, strict=True):
        rad = v["radius"] or DEFAULT_RADIUS
        # Small-circle outline; the RA offset is stretched by 1/cos(dec) on the sky.
        od = np.clip(d + rad * np.sin(theta), -90.0, 90.0)
        ora = r + rad * np.cos(theta) / np.maximum(np.cos(np.radians(od)), 1e-3)
        ax.plot(ora, od, color=cmap(h / span), lw=0.8, alpha=0.6)
    sc = ax.scatter(unwrap, dec, c=hours, cmap=cmap, s=20, zorder=3)
    if failed.any():
        ax.scatter(
            unwrap[failed], dec[failed], marker="x", color="red", s=80, zorder=4, label="failed"
        )
        ax.legend(loc="best", fontsize=8)
    plt.colorbar(sc, ax=ax, label="hours since the first visit")
    ax.invert_xaxis()
    ax.set_aspect(1.0 / max(np.cos(np.radians(np.mean(dec))), 0.05), adjustable="datalim")
    ax.grid(alpha=0.3)


def _latency_plot(report: dict[str, Any], path: Path) -> None:
    """Latency of each visit against when its detections arrived."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    t0 = report["wall"]["first"] or 0.0
    unit, scale = ("min", 60.0) if report["wall"]["seconds"] > 120 else ("s", 1.0)
    rows = [v for v in report["per_visit"] if v["latency_s"] is not None]
    if rows:
        x = np.array([(v["detection_received"] - t0) / scale for v in rows])
        y = np.array([v["latency_s"] for v in rows])
        ax.plot(x, y, "o", ms=4, label="visit")
        for q, style in (("p50", "--"), ("p95", ":")):
            value = report["latency"][q]
            ax.axhline(value, ls=style, color="grey", label=f"{q} {value:.3g} s")
    else:
        _no_data(ax, "latencies")
    failed = [
        v for v in report["per_visit"] if v["outcome"] == "failed" and v["detection_received"]
    ]
    for i, v in enumerate(failed):
        x_f = (v["detection_received"] - t0) / scale
        ax.axvline(x_f, color="red", alpha=0.4, lw=1, label="failed visit" if i == 0 else None)
    ax.set_xlabel(f"detection event received ({unit} since the run's first event)")
    ax.set_ylabel("latency to alerts_ready (s)")
    ax.set_title("alert latency per visit")
    ax.set_ylim(bottom=0)
    if rows or failed:
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stages_plot(report: dict[str, Any], path: Path) -> None:
    """Stage times: stacked per visit, and their spread per stage."""
    import matplotlib.pyplot as plt

    names = [n for n in report["stages"] if n != "total"]
    rows = [v for v in report["per_visit"] if v["timings"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), width_ratios=(3, 2))
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
            label="not in a stage (waits, queues)",
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
    left.set_title("stage times per visit (stacked)")
    right.set_xlabel("stage")
    right.set_ylabel("time (s)")
    right.set_title("stage time spread over the night")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(
    run_dir: str | Path, report: dict[str, Any], out_dir: str | Path | None = None
) -> list[Path]:
    """Write the sky map, the latency plot and the stage-time plot as PNGs.

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
        ``sky.png``, ``latency.png``, ``stages.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "sky.png", out / "latency.png", out / "stages.png"]
    for plot, path in zip((_sky_plot, _latency_plot, _stages_plot), paths, strict=True):
        plot(report, path)
    return paths


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
