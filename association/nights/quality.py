"""Association quality of a night against the simulator's truth.

Pure numpy. The pipeline's DIASources are joined to the truth by
diaSourceId; only truth rows of processed visits (stored in the database)
count, the others are reported as not processed.

Each processed DIASource has an *expected* Object: for a static or variable
source, its true Object when that was preloaded; otherwise, and for a
transient, the Object its group's first processed detection (in observing
order) should have made, whose id is that detection's diaSourceId. A
source whose expected Object is itself should make it; the others should
link to it. So quality is defined with or without a starting catalogue.

Over several nights of a survey, the truth of every night (and the starting
catalogue of every night) is given at once: a transient seen on two nights
should link to the Object its first detection made, whichever night that was.
The figures are then also given night by night.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

PRELOADED_KINDS = ("static", "variable")
"""Truth kinds of DIASources of a preloaded Object."""

TRUTH_KINDS = ("variable", "static", "transient", "mover", "spurious")
"""Every truth kind, in the simulator's order."""


def _col(table: Any, name: str) -> np.ndarray:
    """One column of a structured array, a dict of arrays or a pyarrow Table."""
    values = table[name]
    if hasattr(values, "to_numpy"):  # pyarrow (Chunked)Array
        return np.asarray(values.to_numpy(zero_copy_only=False))
    return np.asarray(values)


def _rate(hit: int, total: int) -> dict[str, Any]:
    """``{"n": total, "ok": hit, "fraction": hit / total}``; fraction None when total is 0."""
    return {"n": int(total), "ok": int(hit), "fraction": hit / total if total else None}


def quality(
    db_diasources: Any,
    truth: Any,
    preloaded_ids: np.ndarray,
    visits: np.ndarray | None = None,
    visit_nights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Completeness, purity, mover recovery, false new Objects and transient linking.

    Parameters
    ----------
    db_diasources : structured array, dict of arrays or table
        The pipeline's DIASources: ``diaSourceId``, ``diaObjectId``, ``ssObjectId``.
    truth : structured array, dict of arrays or table
        ``truth/diasources.parquet`` of the archive: ``diaSourceId``, ``visit``,
        ``kind`` (str), ``diaObjectId``, ``ssObjectId``, ``transientId``, ``predicted``.
    preloaded_ids : ndarray
        diaObjectIds of the preloaded catalogue.
    visits : ndarray, optional
        The processed (stored) visits, in observing order. By default the
        visits of truth rows found in ``db_diasources``, ascending.
    visit_nights : ndarray, optional
        The night (start MJD) of each of ``visits``: the figures are then
        given night by night too.

    Returns
    -------
    dict
        JSON-able: ``processed``, ``not_processed``, ``completeness``,
        ``purity``, ``movers``, ``new_objects``, ``transients``; with
        ``visit_nights``, ``nights``: per night, ``night_mjd``, ``visits``,
        ``diasources``, ``completeness``, ``purity``, ``movers`` and
        ``new_objects``. A fraction is None when nothing counts towards it.
    """
    t_id = _col(truth, "diaSourceId").astype("i8")
    t_visit = _col(truth, "visit").astype("i8")
    t_kind = _col(truth, "kind").astype(str)
    t_obj = _col(truth, "diaObjectId").astype("i8")
    t_ss = _col(truth, "ssObjectId").astype("i8")
    t_tr = _col(truth, "transientId").astype("i8")
    t_pred = _col(truth, "predicted").astype(bool)
    d_id = _col(db_diasources, "diaSourceId").astype("i8")
    d_obj_all = _col(db_diasources, "diaObjectId").astype("i8")
    d_ss_all = _col(db_diasources, "ssObjectId").astype("i8")
    preloaded = np.unique(np.asarray(preloaded_ids, dtype="i8"))

    order = np.argsort(d_id, kind="stable")
    d_sorted = d_id[order]
    at = np.clip(np.searchsorted(d_sorted, t_id), 0, max(d_sorted.size - 1, 0))
    in_db = (d_sorted[at] == t_id) if d_sorted.size else np.zeros(t_id.size, bool)
    if visits is None:
        visits = np.unique(t_visit[in_db])
    visits = np.asarray(visits, dtype="i8")
    processed = np.isin(t_visit, visits)

    rows = np.flatnonzero(processed)
    found = in_db[rows]
    d_obj = np.zeros(rows.size, "i8")
    d_ss = np.zeros(rows.size, "i8")
    d_obj[found] = d_obj_all[order[at[rows[found]]]]
    d_ss[found] = d_ss_all[order[at[rows[found]]]]
    sid, kind, obj, ss = t_id[rows], t_kind[rows], t_obj[rows], t_ss[rows]
    pred = t_pred[rows]

    rank = _rank(visits, t_visit[rows])
    expected = _expected(sid, kind, obj, t_tr[rows], rank, preloaded)
    skipped = ~processed
    out = {
        "processed": {
            "visits": int(visits.size),
            "diasources": int(rows.size),
            "missing_in_db": int((~found).sum()),
            "db_not_in_truth": int((~np.isin(d_id, t_id)).sum()),
        },
        "not_processed": {
            "visits": int(np.unique(t_visit[skipped]).size),
            "diasources": int(skipped.sum()),
            "by_kind": _by_kind(t_kind[skipped]),
        },
        "completeness": _completeness(sid, kind, obj, expected, d_obj),
        "purity": _purity(sid, kind, expected, d_obj),
        "movers": _movers(kind, ss, pred, d_ss),
        "new_objects": _new_objects(sid, kind, obj, expected, pred, d_obj),
        "transients": _transients(sid, t_tr[rows], d_obj, rank),
    }
    if visit_nights is not None:
        night = np.asarray(visit_nights, dtype=float)[rank]
        out["nights"] = []
        for n in np.unique(night):
            m = night == n
            out["nights"].append(
                {
                    "night_mjd": float(n),
                    "visits": int(np.unique(t_visit[rows][m]).size),
                    "diasources": int(m.sum()),
                    "completeness": _completeness(sid[m], kind[m], obj[m], expected[m], d_obj[m]),
                    "purity": _purity(sid[m], kind[m], expected[m], d_obj[m]),
                    "movers": _movers(kind[m], ss[m], pred[m], d_ss[m]),
                    "new_objects": _new_objects(
                        sid[m], kind[m], obj[m], expected[m], pred[m], d_obj[m]
                    ),
                }
            )
    return out


def _rank(visits: np.ndarray, visit: np.ndarray) -> np.ndarray:
    """Each of ``visit``'s position in ``visits`` (the observing order)."""
    by_id = np.argsort(visits, kind="stable")
    return by_id[np.searchsorted(visits[by_id], visit)]


def _by_kind(kind: np.ndarray) -> dict[str, int]:
    return {k: int((kind == k).sum()) for k in TRUTH_KINDS}


def _expected(
    sid: np.ndarray,
    kind: np.ndarray,
    obj: np.ndarray,
    tr: np.ndarray,
    rank: np.ndarray,
    preloaded: np.ndarray,
) -> np.ndarray:
    """Each DIASource's expected Object (module docstring); 0 for none."""
    out = np.zeros(sid.size, "i8")
    star = np.isin(kind, PRELOADED_KINDS) & (obj > 0)
    known = star & np.isin(obj, preloaded)
    out[known] = obj[known]
    # one key space for both kinds of groups: Objects > 0, transients < 0
    group = np.where(star & ~known, obj, np.where((kind == "transient") & (tr > 0), -tr, 0))
    sel = np.flatnonzero(group != 0)
    sel = sel[np.lexsort((sid[sel], rank[sel], group[sel]))]
    g = group[sel]
    first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if g.size else np.empty(0, "i8")
    out[sel] = np.repeat(sid[sel][first], np.diff(np.r_[first, g.size]))
    return out


def _completeness(
    sid: np.ndarray, kind: np.ndarray, obj: np.ndarray, expected: np.ndarray, d_obj: np.ndarray
) -> dict[str, Any]:
    """Of the static and variable sources that should link to an Object, the fraction that did."""
    true_link = np.isin(kind, PRELOADED_KINDS) & (obj > 0) & (expected != sid)
    made = true_link & (d_obj == expected)
    out = {"all": _rate(made.sum(), true_link.sum())}
    for k in PRELOADED_KINDS:
        sel = kind == k
        out[k] = _rate((made & sel).sum(), (true_link & sel).sum())
    return out


def _purity(
    sid: np.ndarray, kind: np.ndarray, expected: np.ndarray, d_obj: np.ndarray
) -> dict[str, Any]:
    """Of the pipeline's links to existing Objects (preloaded or made earlier), the true ones."""
    linked = (d_obj > 0) & (d_obj != sid)
    right = linked & (d_obj == expected)
    wrong = linked & ~right
    return _rate(right.sum(), linked.sum()) | {"wrong_by_kind": _by_kind(kind[wrong])}


def _movers(kind: np.ndarray, ss: np.ndarray, pred: np.ndarray, d_ss: np.ndarray) -> dict:
    """Recovery of predicted movers, wrong mover matches, non-movers taken as movers."""
    mover = kind == "mover"
    taken = d_ss != 0
    return {
        "recovery": _rate((mover & pred & (d_ss == ss)).sum(), (mover & pred).sum()),
        "matched": int(taken.sum()),
        "matched_wrongly": int((mover & taken & (d_ss != ss)).sum()),
        "non_movers_matched": int((~mover & taken).sum()),
        "non_movers_by_kind": _by_kind(kind[~mover & taken]),
    }


def _new_objects(
    sid: np.ndarray,
    kind: np.ndarray,
    obj: np.ndarray,
    expected: np.ndarray,
    pred: np.ndarray,
    d_obj: np.ndarray,
) -> dict[str, Any]:
    """Objects created tonight, by truth kind, and those that should not have been.

    ``false_preloaded`` counts static and variable sources that made an
    Object where they should have linked to one (preloaded or made earlier).
    """
    new = d_obj == sid
    of_preloaded = new & np.isin(kind, PRELOADED_KINDS) & (obj > 0) & (expected != sid)
    of_predicted = new & (kind == "mover") & pred
    by_kind = _by_kind(kind[new])
    mover_new = new & (kind == "mover")
    by_kind.pop("mover")
    by_kind["mover_predicted"] = int((mover_new & pred).sum())
    by_kind["mover_unpredicted"] = int((mover_new & ~pred).sum())
    return {
        "n": int(new.sum()),
        "by_kind": by_kind,
        "false": int((of_preloaded | of_predicted).sum()),
        "false_preloaded": int(of_preloaded.sum()),
        "false_predicted_mover": int(of_predicted.sum()),
    }


def _transients(
    sid: np.ndarray, tr: np.ndarray, d_obj: np.ndarray, visit_rank: np.ndarray
) -> dict[str, Any]:
    """For transients seen twice or more, later detections linked to the first's new Object."""
    sel = np.flatnonzero(tr > 0)
    sel = sel[np.lexsort((sid[sel], visit_rank[sel], tr[sel]))]
    t = tr[sel]
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]]) if t.size else np.empty(0, "i8")
    sizes = np.diff(np.r_[starts, t.size])
    multi = starts[sizes >= 2]
    first_of = np.repeat(starts, sizes)  # each detection's group start
    later = (np.arange(t.size) != first_of) & np.isin(first_of, multi)
    linked = later & (d_obj[sel] == sid[sel][first_of])
    first_created = d_obj[sel][multi] == sid[sel][multi]
    return {
        "n_transients": int(multi.size),
        "first_created": int(first_created.sum()),
        "later": _rate(linked.sum(), later.sum()),
    }


def summary_line(q: Mapping[str, Any]) -> str:
    """One line of the headline figures, for logs."""

    def pct(r: Mapping[str, Any]) -> str:
        return "n/a" if r["fraction"] is None else f"{100 * r['fraction']:.2f}%"

    return (
        f"completeness {pct(q['completeness']['all'])}, purity {pct(q['purity'])}, "
        f"mover recovery {pct(q['movers']['recovery'])}, "
        f"false new Objects {q['new_objects']['false']}"
    )
