"""One-to-one association by minimum total cost, as Rubin's ap_association does it (DM-54923).

A visit's DIASources are paired with Objects so that each DIASource takes at
most one Object and each Object at most one DIASource. Candidates are the
pairs within a hard radius; each has a cost (`position_cost`), the Gaussian
negative log-likelihood of the separation under both position errors::

    cost = 0.5 * chi2 + 0.5 * ln(var_ra * var_dec)        (variances in arcsec^2)

A DIASource left unpaired makes a new Object. `assign` chooses the pairs:

- ``unmatched_cost=None`` (the default): as many pairs as possible, and of
  those pairings the one of least total cost. This is Rubin's rule made
  exact: its "unmatched" cost sits above every candidate's, so a real match
  is always preferred.
- ``unmatched_cost=U``: least total cost where every unpaired source costs
  ``U``; a candidate that costs ``U`` or more is never taken.

The candidate graph is split into connected components. A component of one
pair (nearly all of them) is decided in bulk; a larger one by an exact
shortest-augmenting-path assignment (Jonker-Volgenant/Crouse, sparse, one
row per source). Components are found and solved in the order of the keys
(diaSourceId, diaObjectId), and equal path lengths are broken by the smaller
key, so the result depends neither on the order the candidates arrive in nor
on how they were split between Slices: every component is solved whole, by
whoever gathers it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from association.matching.zoneindex import ZoneIndex

_JIT = {"cache": True, "nogil": True}
_ARCSEC = 3600.0
_DEG = np.pi / 180.0


@dataclass(frozen=True)
class CostConfig:
    """Position errors in the association cost.

    Parameters
    ----------
    sigma_floor_arcsec : float
        Floor on the combined (source + Object) 1-sigma error per axis.
    fallback_sigma_arcsec : float
        Error used for a missing, NaN or non-positive ``raErr``/``decErr``
        (about one LSSTCam pixel).
    """

    sigma_floor_arcsec: float = 0.05
    fallback_sigma_arcsec: float = 0.2

    def __post_init__(self) -> None:
        if not (self.sigma_floor_arcsec > 0 and self.fallback_sigma_arcsec > 0):
            raise ValueError(f"error floor and fallback must be > 0: {self}")


# -- costs ----------------------------------------------------------------------------------


@nb.njit(**_JIT, inline="always")
def _var(errors, row, fallback2):
    # squared error in arcsec^2 of errors[row] (deg); the fallback when unusable
    if errors.size == 0:
        return fallback2
    e = errors[row] * _ARCSEC
    return e * e if e > 0.0 and e < np.inf else fallback2


@nb.njit(**_JIT, inline="always")
def tangent_offset_arcsec(ra0, dec0, ra1, dec1):
    """(xi east, eta north) of (ra1, dec1) in the tangent plane at (ra0, dec0), arcsec."""
    d0 = _DEG * dec0
    d1 = _DEG * dec1
    da = _DEG * (ra1 - ra0)
    sin_d0 = np.sin(d0)
    cos_d0 = np.cos(d0)
    cos_d1 = np.cos(d1)
    sh = np.sin(0.5 * da)
    cos_c = sin_d0 * np.sin(d1) + cos_d0 * cos_d1 * np.cos(da)
    xi = cos_d1 * np.sin(da) / cos_c
    # cos d0 sin d1 - sin d0 cos d1 cos da, without cancellation
    eta = (np.sin(d1 - d0) + 2.0 * sin_d0 * cos_d1 * sh * sh) / cos_c
    return xi / _DEG * _ARCSEC, eta / _DEG * _ARCSEC


@nb.njit(**_JIT)
def _pair_costs(src, obj, sra, sdec, sra_err, sdec_err, ora, odec, ora_err, odec_err, f2, fb2):
    n = src.size
    out = np.empty(n, np.float64)
    for k in range(n):  # serial: ~30 ns a pair, less than waking threads
        i = src[k]
        j = obj[k]
        xi, eta = tangent_offset_arcsec(ora[j], odec[j], sra[i], sdec[i])
        vr = max(_var(sra_err, i, fb2) + _var(ora_err, j, fb2), f2)
        vd = max(_var(sdec_err, i, fb2) + _var(odec_err, j, fb2), f2)
        out[k] = 0.5 * (xi * xi / vr + eta * eta / vd) + 0.5 * np.log(vr * vd)
    return out


def _errors(values: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if values is None:
        return np.empty(0, np.float64)
    out = np.ascontiguousarray(values, dtype=np.float64)
    if out.shape != (n,):
        raise ValueError(f"{name} has shape {out.shape}, expected ({n},)")
    return out


def position_cost(
    src_row: np.ndarray,
    obj_row: np.ndarray,
    src_ra: np.ndarray,
    src_dec: np.ndarray,
    obj_ra: np.ndarray,
    obj_dec: np.ndarray,
    src_ra_err: np.ndarray | None = None,
    src_dec_err: np.ndarray | None = None,
    obj_ra_err: np.ndarray | None = None,
    obj_dec_err: np.ndarray | None = None,
    config: CostConfig | None = None,
) -> np.ndarray:
    """Cost of each candidate pair ``(src_row[k], obj_row[k])``.

    ``0.5 * chi2 + 0.5 * ln(var_ra * var_dec)``: the offset is taken in the
    tangent plane at the Object (east, north; arcsec); per axis the variance
    is the sum of the source's and the Object's squared errors (arcsec^2),
    floored at ``sigma_floor_arcsec ** 2``. Errors are on-sky 1-sigma in
    degrees (``raErr`` along the RA direction, as the simulator and Rubin's
    DPDD state them); a missing array, NaN or non-positive value counts as
    ``fallback_sigma_arcsec``. Objects carry no position errors today, so
    their errors default to the fallback.

    Returns
    -------
    float64 array, one cost per pair; lower is likelier, and may be negative.
    """
    config = config or CostConfig()
    src_row = np.ascontiguousarray(src_row, dtype=np.int64)
    obj_row = np.ascontiguousarray(obj_row, dtype=np.int64)
    if src_row.shape != obj_row.shape or src_row.ndim != 1:
        raise ValueError("src_row and obj_row must be 1-d arrays of one length")
    sra = np.ascontiguousarray(src_ra, dtype=np.float64)
    sdec = np.ascontiguousarray(src_dec, dtype=np.float64)
    ora = np.ascontiguousarray(obj_ra, dtype=np.float64)
    odec = np.ascontiguousarray(obj_dec, dtype=np.float64)
    ns, no = sra.size, ora.size
    lowest = min(src_row.min(), obj_row.min()) if src_row.size else 0
    if lowest < 0 or (src_row.size and (src_row.max() >= ns or obj_row.max() >= no)):
        raise ValueError("a candidate's row lies outside the source or Object arrays")
    return _pair_costs(
        src_row,
        obj_row,
        sra,
        sdec,
        _errors(src_ra_err, ns, "src_ra_err"),
        _errors(src_dec_err, ns, "src_dec_err"),
        ora,
        odec,
        _errors(obj_ra_err, no, "obj_ra_err"),
        _errors(obj_dec_err, no, "obj_dec_err"),
        config.sigma_floor_arcsec**2,
        config.fallback_sigma_arcsec**2,
    )


# -- the assignment -------------------------------------------------------------------------


@nb.njit(**_JIT)
def _find(parent, x):
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@nb.njit(**_JIT)
def _component_of(si, oi, n_src, n_obj):
    # union-find over sources 0..n_src-1 and Objects n_src..; each pair's
    # component, labelled by the smallest source rank in it
    parent = np.arange(n_src + n_obj)
    for k in range(si.size):
        a = _find(parent, si[k])
        b = _find(parent, n_src + oi[k])
        if a != b:
            if a < b:
                parent[b] = a
            else:
                parent[a] = b
    out = np.empty(si.size, np.int64)
    for k in range(si.size):
        out[k] = _find(parent, si[k])  # roots are the smallest node: a source
    return out


@nb.njit(**_JIT)
def _solve(ptr, col, cost, n_rows, n_cols, unmatched, chosen, pair_of):
    # Min-cost assignment of one component: rows (sources, CSR ptr/col/cost,
    # cost >= 0) to columns (Objects) or to the row's own dummy column
    # (n_cols + row) of cost `unmatched`. Crouse's shortest augmenting path,
    # one row at a time, over the reached columns only. A dummy's dual stays
    # 0: it is scanned only as the sink. Marks chosen[pair_of[entry]].
    inf = np.inf
    n_all = n_cols + n_rows
    u = np.zeros(n_rows)
    v = np.zeros(n_cols)
    row4col = np.full(n_cols, -1, np.int64)
    col4row = np.full(n_rows, -1, np.int64)
    shortest = np.full(n_all, inf)
    path = np.full(n_all, -1, np.int64)
    scanned = np.zeros(n_all, np.bool_)
    reached = np.empty(n_all, np.int64)
    rows_seen = np.empty(n_rows, np.int64)
    for cur in range(n_rows):
        n_reached = 0
        n_seen = 0
        min_val = 0.0
        i = cur
        sink = -1
        while sink < 0:
            rows_seen[n_seen] = i
            n_seen += 1
            for e in range(ptr[i], ptr[i + 1] + 1):
                if e < ptr[i + 1]:
                    j = col[e]
                    r = min_val + cost[e] - u[i] - v[j]
                else:  # the row's dummy
                    j = n_cols + i
                    r = min_val + unmatched - u[i]
                if scanned[j] or not r < shortest[j]:
                    continue
                if shortest[j] == inf:
                    reached[n_reached] = j
                    n_reached += 1
                shortest[j] = r
                path[j] = i
            # the unscanned reached column nearest the root; ties to a free
            # column, then the smaller column (dummies come last)
            best = -1
            low = inf
            for t in range(n_reached):
                j = reached[t]
                if scanned[j]:
                    continue
                s = shortest[j]
                if best < 0 or s < low:
                    best, low = j, s
                elif s == low:
                    free_j = j >= n_cols or row4col[j] < 0
                    free_b = best >= n_cols or row4col[best] < 0
                    if (free_j and not free_b) or (free_j == free_b and j < best):
                        best = j
            min_val = low
            scanned[best] = True
            if best >= n_cols or row4col[best] < 0:
                sink = best
            else:
                i = row4col[best]
        # dual updates (Crouse), then augment along the path
        u[cur] += min_val
        for t in range(1, n_seen):
            r_ = rows_seen[t]
            u[r_] += min_val - shortest[col4row[r_]]
        for t in range(n_reached):
            j = reached[t]
            if scanned[j] and j < n_cols:
                v[j] -= min_val - shortest[j]
        j = sink
        while True:
            i = path[j]
            prev = col4row[i]
            col4row[i] = j
            if j < n_cols:
                row4col[j] = i
            if i == cur:
                break
            j = prev
        for t in range(n_reached):  # reset the scratch for the next row
            j = reached[t]
            shortest[j] = inf
            scanned[j] = False
            path[j] = -1
    for i in range(n_rows):
        j = col4row[i]
        if j >= n_cols:
            continue
        for e in range(ptr[i], ptr[i + 1]):
            if col[e] == j:
                chosen[pair_of[e]] = True


@nb.njit(**_JIT)
def _solve_components(starts, si, oi, cost, pair_of, unmatched, chosen):
    # Components are runs [starts[c], starts[c+1]) of pairs sorted by
    # (component, source rank, Object rank).
    n_comp = starts.size - 1
    for c in range(n_comp):
        lo, hi = starts[c], starts[c + 1]
        m = hi - lo
        # local rows: sources in rank order (already sorted); local columns:
        # Objects in rank order
        n_rows = 0
        ptr = np.empty(m + 1, np.int64)
        for k in range(lo, hi):
            if k == lo or si[k] != si[k - 1]:
                ptr[n_rows] = k - lo
                n_rows += 1
        ptr[n_rows] = m
        objs = np.unique(oi[lo:hi])
        col = np.searchsorted(objs, oi[lo:hi])
        c_min = cost[lo:hi].min()
        c_max = cost[lo:hi].max()
        local = cost[lo:hi] - c_min
        # with no unmatched cost, more pairs always win: an 'unmatched' dearer
        # than any pairing's spread of total cost
        span = n_rows * (c_max - c_min) + 1.0
        u_cost = span if unmatched == np.inf else unmatched - c_min
        _solve(ptr[: n_rows + 1], col, local, n_rows, objs.size, u_cost, chosen, pair_of[lo:hi])


def components(src_key: np.ndarray, obj_key: np.ndarray) -> np.ndarray:
    """Connected component of each candidate pair, labelled 0, 1, ... in key order.

    Two pairs are in one component when a chain of pairs sharing a source or
    an Object links them. Labels follow the smallest source key of each.
    """
    src_key = np.asarray(src_key, dtype=np.int64)
    obj_key = np.asarray(obj_key, dtype=np.int64)
    if src_key.size == 0:
        return np.empty(0, np.int64)
    src_u, si = np.unique(src_key, return_inverse=True)
    obj_u, oi = np.unique(obj_key, return_inverse=True)
    root = _component_of(si.ravel(), oi.ravel(), src_u.size, obj_u.size)
    return np.unique(root, return_inverse=True)[1].ravel()


def assign(
    src_key: np.ndarray,
    obj_key: np.ndarray,
    cost: np.ndarray,
    unmatched_cost: float | None = None,
) -> np.ndarray:
    """Choose a one-to-one set of candidate pairs of least total cost.

    Parameters
    ----------
    src_key, obj_key : int64 arrays
        The candidate pairs: the source and the Object of each, by a key that
        orders them (diaSourceId and diaObjectId, or rows). No pair may
        appear twice.
    cost : float64 array
        Cost of each pair, e.g. from `position_cost`.
    unmatched_cost : float, optional
        Cost of leaving a source unpaired. None: pair as many sources as
        possible, then least total cost (Rubin's rule).

    Returns
    -------
    bool array
        Which candidate pairs are chosen. Each source and each Object is in
        at most one chosen pair.
    """
    src_key = np.ascontiguousarray(src_key, dtype=np.int64)
    obj_key = np.ascontiguousarray(obj_key, dtype=np.int64)
    cost = np.ascontiguousarray(cost, dtype=np.float64)
    if not (src_key.shape == obj_key.shape == cost.shape and cost.ndim == 1):
        raise ValueError("src_key, obj_key and cost must be 1-d arrays of one length")
    if not np.isfinite(cost).all():
        k = int(np.flatnonzero(~np.isfinite(cost))[0])
        raise ValueError(f"candidate {k} has cost {cost[k]}: costs must be finite")
    if unmatched_cost is not None and not np.isfinite(unmatched_cost):
        raise ValueError(f"unmatched_cost must be finite or None, got {unmatched_cost}")
    chosen = np.zeros(cost.size, bool)
    live = np.arange(cost.size) if unmatched_cost is None else np.flatnonzero(cost < unmatched_cost)
    if live.size == 0:
        return chosen
    src_u, si = np.unique(src_key[live], return_inverse=True)
    obj_u, oi = np.unique(obj_key[live], return_inverse=True)
    si, oi = si.ravel(), oi.ravel()
    per_src = np.bincount(si, minlength=src_u.size)
    per_obj = np.bincount(oi, minlength=obj_u.size)
    alone = (per_src[si] == 1) & (per_obj[oi] == 1)
    chosen[live[alone]] = True
    rest = np.flatnonzero(~alone)
    if rest.size == 0:
        return chosen
    key = si[rest] * np.int64(obj_u.size) + oi[rest]
    order = np.argsort(key, kind="stable")
    if np.any(np.diff(key[order]) == 0):
        k = live[rest[order[np.flatnonzero(np.diff(key[order]) == 0)[0]]]]
        raise ValueError(f"candidate pair ({src_key[k]}, {obj_key[k]}) appears twice")
    rest = rest[order]
    comp = _component_of(si[rest], oi[rest], src_u.size, obj_u.size)
    by_comp = np.argsort(comp, kind="stable")  # keeps (source, Object) order inside
    rest, comp = rest[by_comp], comp[by_comp]
    starts = np.flatnonzero(np.r_[True, comp[1:] != comp[:-1], True])
    _solve_components(
        starts,
        si[rest],
        oi[rest],
        cost[live[rest]],
        live[rest],
        np.inf if unmatched_cost is None else float(unmatched_cost),
        chosen,
    )
    return chosen


def nearest(src_key: np.ndarray, obj_key: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """The nearest-Object rule: each source's nearest candidate, not one-to-one.

    Ties in distance go to the smaller ``obj_key``. Returns which candidate
    pairs are chosen (one per source that has any).
    """
    src_key = np.asarray(src_key, dtype=np.int64)
    obj_key = np.asarray(obj_key, dtype=np.int64)
    distance = np.asarray(distance, dtype=np.float64)
    if not (src_key.shape == obj_key.shape == distance.shape and distance.ndim == 1):
        raise ValueError("src_key, obj_key and distance must be 1-d arrays of one length")
    chosen = np.zeros(src_key.size, bool)
    order = np.lexsort((obj_key, distance, src_key))
    first = np.r_[True, src_key[order][1:] != src_key[order][:-1]] if order.size else order
    chosen[order[first]] = True
    return chosen


# -- the whole step -------------------------------------------------------------------------


def candidates(
    index: ZoneIndex, src_ra: np.ndarray, src_dec: np.ndarray, radius_arcsec: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (source, Object) pair within the radius: ``(src_row, obj_row, dist_arcsec)``.

    A compiled query of the zone index over the Objects; sorted by
    (src_row, obj_row).
    """
    return index.pairs(src_ra, src_dec, radius_arcsec)


@dataclass(frozen=True)
class Association:
    """What `associate` decided, one row per source.

    ``obj_row`` is the row of the source's Object, -1 when it makes a new
    one; ``cost`` and ``distance_arcsec`` are the chosen pair's (NaN for -1);
    ``n_candidates`` counts the Objects within the radius.
    """

    obj_row: np.ndarray
    cost: np.ndarray
    distance_arcsec: np.ndarray
    n_candidates: np.ndarray


def associate(
    index: ZoneIndex,
    src_ra: np.ndarray,
    src_dec: np.ndarray,
    radius_arcsec: float,
    src_ids: np.ndarray | None = None,
    src_ra_err: np.ndarray | None = None,
    src_dec_err: np.ndarray | None = None,
    obj_ra_err: np.ndarray | None = None,
    obj_dec_err: np.ndarray | None = None,
    config: CostConfig | None = None,
    unmatched_cost: float | None = None,
) -> Association:
    """Candidates, costs and the one-to-one assignment of one set of sources.

    ``index`` is built over the Objects with their diaObjectIds as ids;
    ``src_ids`` (default: the rows) order the sources for tie-breaking.
    For sources split between Slices, let each Slice compute
    `candidates` and `position_cost` and call `assign` once on all the
    pairs, keyed by diaSourceId and diaObjectId.
    """
    n = np.asarray(src_ra).size
    s, o, d = candidates(index, src_ra, src_dec, radius_arcsec)
    cost = position_cost(
        s,
        o,
        src_ra,
        src_dec,
        index.ra,
        index.dec,
        src_ra_err,
        src_dec_err,
        obj_ra_err,
        obj_dec_err,
        config,
    )
    keys = np.arange(n, dtype=np.int64) if src_ids is None else np.asarray(src_ids, np.int64)
    take = assign(keys[s], index.ids[o], cost, unmatched_cost)
    obj_row = np.full(n, -1, np.int64)
    out_cost = np.full(n, np.nan)
    out_dist = np.full(n, np.nan)
    obj_row[s[take]] = o[take]
    out_cost[s[take]] = cost[take]
    out_dist[s[take]] = d[take]
    return Association(obj_row, out_cost, out_dist, np.bincount(s, minlength=n))


def warm_up() -> None:
    """Load (or compile) the cost and assignment kernels now, not in the first visit.

    A chain of two sources and two Objects makes a component to solve.
    """
    ra = np.array([10.0, 10.0001, 10.0002])
    err = np.full(3, 1e-5, np.float32)
    s, o = np.array([0, 0, 1]), np.array([0, 1, 1])
    cost = position_cost(s, o, ra, np.zeros(3), ra, np.zeros(3), err, err, err, err)
    assign(s, o, cost)
