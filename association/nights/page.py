"""The live night page: HTML panels and server-made SVG plots from a `RunWatcher` snapshot.

Every panel is a fragment of HTML with an id; the page polls ``api/night`` and
puts the fragments it gets in place, so the server alone renders (no plotting
library in the browser, and the page reads the same without JavaScript).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from association.nights.report import quality_lines

PANELS = ("header", "summary", "latency", "stages", "ranks", "failures", "rejected", "quality")
MJD_UNIX = 40587.0
COLORS = {"done": "#1f77b4", "failed": "#d62728", "queue": "#ff7f0e", "e2e": "#7f7f7f"}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em 2em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.2em 0 .4em; }
.sub { color: #555; } .conn { color: #b00; min-height: 1.2em; margin: 0; }
.state { padding: .1em .5em; border-radius: .6em; background: #ddd; font-weight: 600; }
.state.running { background: #cfc; } .state.draining { background: #fe9; }
.state.stopped { background: #ddd; } .state.waiting { background: #def; }
.figures { display: flex; flex-wrap: wrap; gap: .6em; }
.fig { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .4em .8em; min-width: 8em; }
.fig .big { font-size: 1.6em; font-weight: 600; } .fig label { display: block; color: #666; font-size: .85em; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ddd; padding: .15em .5em; text-align: right; vertical-align: top; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
td.err { text-align: left; color: #900; max-width: 40em; overflow-wrap: anywhere; }
.other { color: #555; font-size: .85em; text-align: left; max-width: 34em; }
pre { background: #fff; border: 1px solid #ddd; padding: .5em; overflow-x: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
#latency-plot { max-width: 1100px; display: block; }
svg .axis { stroke: #888; } svg .grid { stroke: #e4e4e4; }
svg .p50 { stroke: #555; stroke-dasharray: 5 4; } svg .failed-line { stroke: #d62728; opacity: .35; }
"""

SCRIPT = """"use strict";
const every = 1000 * Number(document.body.dataset.refresh || 2);
async function refresh() {
  const conn = document.getElementById("conn");
  try {
    const reply = await fetch("api/night", {cache: "no-store"});
    if (!reply.ok) throw new Error("HTTP " + reply.status);
    const got = await reply.json();
    for (const [id, html] of Object.entries(got.html)) {
      const el = document.getElementById(id);
      if (el) el.innerHTML = html;
    }
    conn.textContent = "";
  } catch (err) {
    conn.textContent = "no answer from the server (" + err.message + "); retrying";
  }
  setTimeout(refresh, every);
}
setTimeout(refresh, every);
"""


# -- formatting -----------------------------------------------------------------------------


def _s(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f} s"


def _n(x: Any) -> str:
    return "-" if x is None else f"{x:,}" if isinstance(x, int) else escape(str(x))


def _ut(t: float | None, seconds: bool = True) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S" if seconds else "%H:%M")


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = round(s)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s" if m else f"{sec} s"


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    left: Iterable[int] = (),
    err: Iterable[int] = (),
) -> str:
    """An HTML table of cells that are HTML already; `left` and `err` columns align left."""
    classes = {i: "l" for i in left} | {i: "err" for i in err}

    def cls(i: int) -> str:
        return f' class="{classes[i]}"' if i in classes else ""

    head = "".join(f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- panels -----------------------------------------------------------------------------------


def panels(snap: dict[str, Any]) -> dict[str, str]:
    """Every panel of the page as an HTML fragment, by element id."""
    return {
        "header": _header(snap),
        "summary": _summary(snap),
        "latency": latency_svg(snap),
        "stages": _stages(snap),
        "ranks": _ranks(snap),
        "failures": _failures(snap),
        "rejected": _rejected(snap),
        "quality": _quality(snap),
    }


def _header(snap: dict[str, Any]) -> str:
    state = escape(snap["state"])
    age = snap["status_age_s"]
    seen = "" if age is None else f"; status written {age:.0f} s ago"
    pipeline = f"pipeline {escape(snap['pipeline'])}, " if snap["pipeline"] else ""
    return (
        f"<h1>nightpipe: {escape(snap['night']['label'])}</h1>"
        f'<p class="sub"><span class="state {state}" id="state">{state}</span> '
        f"{pipeline}run <code>{escape(snap['run_dir'])}</code>"
        f" &middot; page made {_ut(snap['time'])} UT{seen}</p>"
    )


def _fig(value: str, label: str, ident: str | None = None) -> str:
    ident = f' id="{ident}"' if ident else ""
    return f'<div class="fig"><span class="big"{ident}>{value}</span><label>{label}</label></div>'


def _summary(snap: dict[str, Any]) -> str:
    v, lat, tot = snap["visits"], snap["latency"], snap["totals"]
    rate = snap["rate_per_min"]
    eta = "done" if snap["eta_s"] == 0.0 else _duration(snap["eta_s"])
    done = (
        f'<span id="visits-done">{v["done"]}</span> / '
        f'<span id="visits-expected">{v["expected"]}</span>'
    )
    figures = [
        _fig(done, "visits done / expected"),
        _fig(_n(v["failed"]), "failed", "visits-failed"),
        _fig(_n(v["in_flight"]), "in flight", "visits-in-flight"),
        _fig(_n(v["queued"]), "waiting in the journal", "visits-queued"),
        _fig("-" if rate is None else f"{rate:.1f}", "visits / min (last 5 min)", "rate"),
        _fig(eta, "ETA", "eta"),
        _fig(_s(lat["processing"]["p50"]), "processing latency p50 (own work)", "processing-p50"),
        _fig(_s(lat["processing"]["p95"]), "processing latency p95"),
        _fig(_s(lat["queue_wait"]["p50"]), "queue wait p50", "queue-p50"),
        _fig(_s(lat["end_to_end"]["p50"]), "end to end p50 (queue included)"),
        _fig(_n(tot["n_alerts"]), "alerts"),
        _fig(_n(tot["n_new_objects"]), "new Objects"),
        _fig(_n(tot["n_moving"]), "moving-object matches"),
        _fig(_n(tot["n_sources"]), "DIASources"),
    ]
    return f'<div class="figures">{"".join(figures)}</div>'


def _stages(snap: dict[str, Any]) -> str:
    stages = snap["stages"]
    if not stages:
        return "<p>no visit done yet</p>"
    means = [s["mean"] or 0.0 for name, s in stages.items() if name != "total"]
    top = max(means, default=0.0) or 1.0
    busy = sum(means)
    rows = []
    for name, s in stages.items():
        bar = ""
        if name != "total" and s["mean"] is not None:
            w = 200.0 * s["mean"] / top
            share = 100.0 * s["mean"] / busy if busy else 0.0
            bar = (
                f'<svg width="250" height="12" role="img"><rect width="{w:.1f}" height="12"'
                f' fill="{COLORS["done"]}"/><text x="{w + 4:.1f}" y="10">{share:.0f}%</text></svg>'
            )
        rows.append(
            [
                escape(name),
                _n(s["n"]),
                _s(s["p50"]),
                _s(s["p95"]),
                _s(s["max"]),
                _s(s["mean"]),
                bar,
            ]
        )
    note = (
        "<p class='sub'>Per visit, from its start; <em>total</em> also holds its waits for"
        " events and for its turn in the ordered section. The bar is the stage's share of the"
        " mean time spent in stages.</p>"
    )
    table = _table(["stage", "n", "p50", "p95", "max", "mean", "share"], rows, left=(0, 6))
    return table + note


def _ranks(snap: dict[str, Any]) -> str:
    ranks = snap["ranks"]
    if not ranks:
        return "<p>no status board yet</p>"
    rows = []
    for r in ranks:
        doing = "-"
        if r["stage"]:
            doing = f"fov {_n(r['exec'])}: {escape(str(r['stage']))} {escape(str(r['hook'] or ''))}"
        other = ", ".join(f"{escape(k)}={_short(v)}" for k, v in r["other"].items())
        frac = r["busy_fraction"]
        rows.append(
            [
                str(r["rank"]),
                escape(r["role"]),
                f"<b>{escape(str(r['state']))}</b>",
                doing,
                _n(r["items_done"]),
                "-" if frac is None else f"{100 * frac:.0f}%",
                _s(r["last_seconds"]),
                "-" if r["seen_s_ago"] is None else f"{r['seen_s_ago']:.1f} s",
                f'<span class="other">{other}</span>',
                escape(str(r["last_error"] or "")),
            ]
        )
    header = ["rank", "role", "state", "doing (last)", "items", "busy", "last item", "seen"]
    html = _table([*header, "figures", "last error"], rows, (1, 2, 3, 8), (9,))
    execs = snap["executions"]
    if execs:
        erows = [
            [
                _n(e.get("key")),
                escape(str(e.get("stage"))),
                escape(str(e.get("phase"))),
                escape(str(e.get("waiting_for") or "")),
                escape(", ".join(str(b) for b in e.get("behind") or [])),
            ]
            for e in execs
        ]
        html += f"<h3>{len(execs)} in flight</h3>" + _table(
            ["fov", "stage", "phase", "waits for", "behind"], erows, left=(1, 2, 3, 4)
        )
    return html


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return escape(str(v))[:60]


def _failures(snap: dict[str, Any]) -> str:
    failures = snap["failures"]
    if not failures:
        return "<p>none</p>"
    rows = [
        [
            _n(f["fov_id"]),
            _ut(f["ended"]),
            escape(str(f["stage"])),
            escape(str(f["hook"])),
            _n(f["rank"]),
            f'<span title="{escape(str(f["error"]))}">{escape(str(f["error"]).splitlines()[0])}</span>',
        ]
        for f in failures
    ]
    return _table(["fov", "ended (UT)", "stage", "hook", "rank", "error"], rows, (2, 3), (5,))


def _rejected(snap: dict[str, Any]) -> str:
    rej, expired = snap["rejected"], snap["events"]["expired"]
    head = (
        f'<p><b id="rejected-n">{rej["n"]}</b> rejected (<code>deadletter.jsonl</code>),'
        f' <b id="expired-n">{expired}</b> expired unused in the journal.</p>'
    )
    if not rej["recent"]:
        return head
    rows = [
        [
            _ut(r["time"]),
            escape(str(r["source"])),
            escape(str(r["reason"])),
            escape(str(r["message"])),
        ]
        for r in rej["recent"]
    ]
    more = f" (the latest {len(rows)})" if rej["n"] > len(rows) else ""
    table = _table(["time (UT)", "source", "reason", "message"], rows, (1, 2), (3,))
    return f"{head}<p>newest first{more}</p>{table}"


def _quality(snap: dict[str, Any]) -> str:
    plots = "".join(
        f'<p><a href="report/{escape(p)}"><img src="report/{escape(p)}" alt="{escape(p)}"'
        f' width="900"></a></p>'
        for p in snap["plots"]
    )
    if snap["quality"] is None:
        text = (
            "<p>No report yet. When the night is done, <code>nightpipe report RUN_DIR</code>"
            " writes one (quality against the archive's truth, and the plots).</p>"
        )
    else:
        text = f"<pre>{escape(chr(10).join(quality_lines(snap['quality'])))}</pre>"
    return text + plots


# -- the latency plot -------------------------------------------------------------------------


def _visit_x(v: dict[str, Any]) -> float | None:
    """When the visit was observed (its MJD), as unix time; else when its detections came."""
    if v["mjd"] is not None:
        return (float(v["mjd"]) - MJD_UNIX) * 86400.0
    return v["detection_received"] or v["ended"]


def _nice_step(span: float, most: int, steps: Sequence[float] | None = None) -> float:
    """The smallest step (1, 2, 5 x 10^k, or one of `steps`) giving at most `most` intervals."""
    if steps is not None:
        return next((s for s in steps if span / s <= most), steps[-1])
    raw = span / most if span > 0 else 1.0
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


TIME_STEPS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)
PLOT_W, PANEL_H, LEFT, RIGHT, TOP, GAP, BOTTOM = 940, 200, 64, 16, 44, 64, 40


def latency_svg(snap: dict[str, Any]) -> str:
    """Two panels against UT: each visit's processing latency (one mark per finished visit),
    and its queue wait with the end-to-end latency beside it.

    Finished visits are ``.visit`` marks in the top panel: ``circle.visit.done`` at the
    processing latency, ``path.visit.failed`` crosses on the axis for failed ones.
    """
    rows = [v for v in snap["per_visit"] if _visit_x(v) is not None]
    finished = [v for v in rows if v["outcome"] is not None]
    height = TOP + 2 * PANEL_H + GAP + BOTTOM
    out = [
        f'<svg id="latency-plot" xmlns="http://www.w3.org/2000/svg" width="100%"'
        f' viewBox="0 0 {PLOT_W} {height}" role="img"'
        f' aria-label="latency per visit">',
        f'<text x="{LEFT}" y="16">{escape(snap["night"]["label"])}, run'
        f" {escape(snap['run'])}: latency per visit against the visit's time (UT)</text>",
    ]
    if not rows:
        out.append(f'<text x="{PLOT_W / 2}" y="{height / 2}">no visits yet</text></svg>')
        return "".join(out)
    xs = [_visit_x(v) for v in rows]
    x0, x1 = min(xs), max(xs)  # type: ignore[type-var]
    if x1 - x0 < 60.0:
        x0, x1 = x0 - 300.0, x1 + 300.0
    pad = 0.02 * (x1 - x0)
    x0, x1 = x0 - pad, x1 + pad
    width = PLOT_W - LEFT - RIGHT

    def sx(t: float) -> float:
        return LEFT + width * (t - x0) / (x1 - x0)

    top_y, bottom_y = TOP, TOP + PANEL_H + GAP
    proc = [v for v in finished if v["processing_s"] is not None]
    waits = [v for v in finished if v["queue_wait_s"] is not None or v["end_to_end_s"] is not None]
    ymax_top = max([v["processing_s"] for v in proc], default=0.0)
    ymax_bottom = max(
        [max(v["queue_wait_s"] or 0.0, v["end_to_end_s"] or 0.0) for v in waits], default=0.0
    )
    sy_top = _axes(out, top_y, ymax_top, "processing (s)", x0, x1, sx, ticks=False)
    sy_bottom = _axes(out, bottom_y, ymax_bottom, "waiting (s)", x0, x1, sx, ticks=True)
    p50 = snap["latency"]["processing"]["p50"]
    if p50 is not None:
        y = sy_top(p50)
        out.append(
            f'<line class="p50" x1="{LEFT}" x2="{PLOT_W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        out.append(
            f'<text x="{PLOT_W - RIGHT - 4}" y="{y - 4:.1f}" text-anchor="end">p50 {p50:.3f} s</text>'
        )
    for v in finished:
        x = sx(_visit_x(v))  # type: ignore[arg-type]
        tip = escape(_tip(v))
        if v["outcome"] == "failed":
            out.append(
                f'<line class="failed-line" x1="{x:.1f}" x2="{x:.1f}" y1="{top_y}"'
                f' y2="{bottom_y + PANEL_H}"/>'
            )
            y = top_y + PANEL_H
            out.append(
                f'<path class="visit failed" d="M{x - 5:.1f},{y - 5:.1f}l10,10m0,-10l-10,10"'
                f' stroke="{COLORS["failed"]}" stroke-width="2"><title>{tip}</title></path>'
            )
        elif v["processing_s"] is not None:
            out.append(
                f'<circle class="visit done" cx="{x:.1f}" cy="{sy_top(v["processing_s"]):.1f}"'
                f' r="3.5" fill="{COLORS["done"]}"><title>{tip}</title></circle>'
            )
        else:  # done, but its timings are unknown
            out.append(
                f'<circle class="visit done" cx="{x:.1f}" cy="{top_y + PANEL_H}" r="3.5"'
                f' fill="none" stroke="{COLORS["done"]}"><title>{tip}</title></circle>'
            )
        if v["end_to_end_s"] is not None:
            out.append(
                f'<circle class="e2e" cx="{x:.1f}" cy="{sy_bottom(v["end_to_end_s"]):.1f}" r="4"'
                f' fill="none" stroke="{COLORS["e2e"]}"><title>{tip}</title></circle>'
            )
        if v["queue_wait_s"] is not None:
            y = sy_bottom(v["queue_wait_s"])
            out.append(
                f'<rect class="queue" x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6"'
                f' fill="{COLORS["queue"]}"><title>{tip}</title></rect>'
            )
    _legend(out, top_y - 6, [("done", "processing latency: detections → alerts, own work")])
    _legend(
        out,
        bottom_y - 6,
        [
            ("queue", "queue wait: start event → execution start"),
            ("e2e", "end to end: detections in → alerts out"),
            ("failed", "failed visit"),
        ],
    )
    out.append("</svg>")
    return "".join(out)


def _tip(v: dict[str, Any]) -> str:
    x = _visit_x(v)
    parts = [f"fov {v['fov_id']}", f"{_ut(x)} UT"]
    if v["mjd"] is not None:
        parts.append(f"MJD {v['mjd']:.5f}")
    if v["outcome"] == "failed":
        parts.append(f"FAILED: {v['error']}")
    parts += [
        f"processing {_s(v['processing_s'])}",
        f"queue wait {_s(v['queue_wait_s'])}",
        f"end to end {_s(v['end_to_end_s'])}",
    ]
    return ", ".join(parts)


def _axes(
    out: list[str],
    y0: float,
    ymax: float,
    label: str,
    x0: float,
    x1: float,
    sx: Callable[[float], float],
    ticks: bool,
) -> Callable[[float], float]:
    """Frame, grid and y ticks of one panel (x tick labels if `ticks`); its y scale."""
    step = _nice_step(ymax * 1.1 or 1.0, 4)
    top = step * math.ceil((ymax * 1.1 or 1.0) / step)

    def sy(value: float) -> float:
        return y0 + PANEL_H * (1.0 - value / top)

    right = PLOT_W - RIGHT
    for i in range(round(top / step) + 1):
        y = sy(i * step)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{i * step:g}</text>')
    tstep = _nice_step(x1 - x0, 8, TIME_STEPS)
    t = tstep * math.ceil(x0 / tstep)
    while t <= x1:
        x = sx(t)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y0 + PANEL_H}"/>')
        if ticks:
            out.append(
                f'<text x="{x:.1f}" y="{y0 + PANEL_H + 16}" text-anchor="middle">'
                f"{_ut(t, seconds=tstep < 60)}</text>"
            )
        t += tstep
    out.append(
        f'<rect class="axis" x="{LEFT}" y="{y0}" width="{right - LEFT}" height="{PANEL_H}"'
        f' fill="none"/>'
    )
    mid = y0 + PANEL_H / 2
    out.append(
        f'<text x="14" y="{mid:.1f}" text-anchor="middle" transform="rotate(-90 14 {mid:.1f})">'
        f"{escape(label)}</text>"
    )
    if ticks:
        out.append(
            f'<text x="{(LEFT + right) / 2}" y="{y0 + PANEL_H + 34}" text-anchor="middle">'
            "visit time (UT)</text>"
        )
    return sy


def _legend(out: list[str], y: float, items: list[tuple[str, str]]) -> None:
    """A row of legend entries whose baseline is `y` (above a panel)."""
    x = LEFT
    for kind, text in items:
        out.append(
            f'<rect x="{x}" y="{y - 8}" width="8" height="8" fill="{COLORS[kind]}"/>'
            f'<text x="{x + 12}" y="{y}">{escape(text)}</text>'
        )
        x += 24 + 6.2 * len(text)


# -- the page ---------------------------------------------------------------------------------


def render_page(snap: dict[str, Any], refresh_s: float) -> str:
    """The whole page: every panel filled in, and the script that keeps them fresh."""
    parts = panels(snap)
    titles = {
        "summary": "Progress",
        "latency": "Latency per visit",
        "stages": "Stage times",
        "ranks": "Ranks",
        "failures": "Failed visits",
        "rejected": "Rejected and expired events",
        "quality": "Report",
    }
    sections = "".join(
        f'<section><h2>{titles[p]}</h2><div id="{p}">{parts[p]}</div></section>' for p in PANELS[1:]
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>nightpipe: {escape(snap['night']['label'])}, {escape(snap['run'])}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="style.css"></head>'
        f'<body data-refresh="{refresh_s:g}"><header id="header">{parts["header"]}</header>'
        f'<p id="conn" class="conn"></p>{sections}'
        '<script src="page.js"></script></body></html>'
    )
