"""Moving objects first: predictions and DIASources paired one-to-one by cost.

Every DIASource of a visit is tested against NightMOPS's predictions before
Object association. In the tangent plane at a prediction (arcsec, east and
north) the prediction's 1-sigma error ellipse, with its semi-axes raised to
at least ``min_axis_arcsec / scale``, plus the source's own position error
make a covariance ``S``. For a source at offset ``d``:

- it is a candidate when its Mahalanobis distance ``m = sqrt(d' S^-1 d)`` is
  at most ``scale`` (3: the 3-sigma ellipse). No cap: an ellipse of any size
  holds what lies in it;
- the pair's cost is the Gaussian negative log-likelihood ``0.5 m^2 + 0.5
  ln det S``, on the same footing as `association.matching.assign.position_cost`.

`mover_matches` then:

1. **Known variables.** A source whose cost against a known variable Object
   (``object_cost``, from `position_cost`) is at most its cost against a
   prediction is not that prediction's: the star explains it at least as well.
   A variable star deep in a large ellipse costs ``~ ln det S`` there (many
   arcsec^2) against about ``ln(0.2^2)`` for its Object, so it stays a star.
2. **One-to-one.** Predictions and sources are paired by `assign`: as many
   pairs as possible, then least total cost; connected groups are solved alone.
3. **Conclusive.** A chosen pair is conclusive when every other one-to-one
   pairing of its group that leaves it out pairs fewer predictions or costs at
   least ``ambiguity_margin`` more (the runner-up is at least ``e**margin``
   times less likely). A lone source in a lone ellipse is conclusive however
   big the ellipse; a large ellipse holding two sources of nearly equal cost
   is not: it loses to ambiguity, never to a cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from association.matching.assign import assign, components, tangent_offset_arcsec
from association.matching.zoneindex import ZoneIndex

_JIT = {"cache": True, "nogil": True}


@dataclass(frozen=True)
class MoverConfig:
    """How predictions meet DIASources.

    Parameters
    ----------
    scale : float
        Gate: a source is a candidate when it lies within this many sigmas
        (Mahalanobis distance) of the prediction.
    min_axis_arcsec : float
        Least scaled semi-axis: 1-sigma axes are raised to ``min_axis_arcsec
        / scale``. There is no largest.
    fallback_sigma_arcsec : float
        A source's position error where ``raErr``/``decErr`` is missing.
    ambiguity_margin : float
        How much costlier (in cost units, natural log of likelihood) the best
        pairing without a pair must be for the pair to be conclusive.
    """

    scale: float = 3.0
    min_axis_arcsec: float = 0.5
    fallback_sigma_arcsec: float = 0.2
    ambiguity_margin: float = 1.0

    def __post_init__(self) -> None:
        if not (self.scale > 0 and self.min_axis_arcsec > 0 and self.fallback_sigma_arcsec > 0):
            raise ValueError(f"scale, min_axis and fallback sigma must be > 0: {self}")
        if not self.ambiguity_margin >= 0:
            raise ValueError(f"ambiguity_margin must be >= 0: {self}")


@nb.njit(**_JIT)
def _costs(p_idx, s_idx, pra, pdec, a, b, pa, sra, sdec, svar_ra, svar_dec):
    # Mahalanobis distance squared and cost of each (prediction, source) pair
    n = p_idx.size
    m2 = np.empty(n)
    cost = np.empty(n)
    for k in range(n):
        i = p_idx[k]
        j = s_idx[k]
        xi, eta = tangent_offset_arcsec(pra[i], pdec[i], sra[j], sdec[j])
        sp = np.sin(np.pi / 180.0 * pa[i])
        cp = np.cos(np.pi / 180.0 * pa[i])
        a2 = a[i] * a[i]
        b2 = b[i] * b[i]
        # major axis along (sin pa, cos pa) in (east, north)
        sxx = a2 * sp * sp + b2 * cp * cp + svar_ra[j]
        syy = a2 * cp * cp + b2 * sp * sp + svar_dec[j]
        sxy = (a2 - b2) * sp * cp
        det = sxx * syy - sxy * sxy
        q = (syy * xi * xi - 2.0 * sxy * xi * eta + sxx * eta * eta) / det
        m2[k] = q
        cost[k] = 0.5 * q + 0.5 * np.log(det)
    return m2, cost


def _source_variance(err: np.ndarray | None, n: int, fallback: float) -> np.ndarray:
    if err is None:
        return np.full(n, fallback**2)
    e = np.asarray(err, dtype=np.float64) * 3600.0
    if e.shape != (n,):
        raise ValueError(f"source errors have shape {e.shape}, expected ({n},)")
    return np.where((e > 0) & np.isfinite(e), e * e, fallback**2)


def mover_candidates(
    pred_ra: np.ndarray,
    pred_dec: np.ndarray,
    semi_major_arcsec: np.ndarray,
    semi_minor_arcsec: np.ndarray,
    position_angle_deg: np.ndarray,
    src_ra: np.ndarray,
    src_dec: np.ndarray,
    src_ra_err: np.ndarray | None = None,
    src_dec_err: np.ndarray | None = None,
    config: MoverConfig | None = None,
    index: ZoneIndex | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (prediction, source) pair within ``scale`` sigmas, with its cost.

    Axes are 1-sigma arcsec, the position angle that of the major axis in
    degrees east of north; source errors on-sky 1-sigma degrees. ``index``
    (built here if not given) is a zone index over ``src_ra, src_dec``.
    Predictions are searched in groups of similar size, each at its own
    radius, so one huge ellipse does not widen every other search.

    Returns
    -------
    pred_idx, src_idx : int64 arrays
        Sorted by (pred_idx, src_idx).
    cost : float64 array
        ``0.5 m^2 + 0.5 ln det S`` (arcsec^2).
    """
    config = config or MoverConfig()
    pra = np.ascontiguousarray(pred_ra, dtype=np.float64)
    pdec = np.ascontiguousarray(pred_dec, dtype=np.float64)
    pa = np.ascontiguousarray(position_angle_deg, dtype=np.float64)
    floor = config.min_axis_arcsec / config.scale
    a = np.maximum(np.asarray(semi_major_arcsec, dtype=np.float64), floor)
    b = np.maximum(np.asarray(semi_minor_arcsec, dtype=np.float64), floor)
    if not (pra.shape == pdec.shape == pa.shape == a.shape == b.shape and pra.ndim == 1):
        raise ValueError("prediction columns must be 1-d arrays of one length")
    if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(pa).all()):
        raise ValueError("prediction axes and position angles must be finite")
    sra = np.ascontiguousarray(src_ra, dtype=np.float64)
    sdec = np.ascontiguousarray(src_dec, dtype=np.float64)
    n_src = sra.size
    vra = _source_variance(src_ra_err, n_src, config.fallback_sigma_arcsec)
    vdec = _source_variance(src_dec_err, n_src, config.fallback_sigma_arcsec)
    empty = np.empty(0, np.int64)
    if pra.size == 0 or n_src == 0:
        return empty, empty.copy(), np.empty(0)
    if index is None:
        index = ZoneIndex.build(sra, sdec, np.arange(n_src, dtype=np.int64))
    elif len(index) != n_src:
        raise ValueError(f"index holds {len(index)} rows, not the {n_src} sources")
    # the 3-sigma ellipse lies within scale * largest sigma; the tangent-plane
    # distance is >= the angle, so an angular search at that radius holds it
    worst = np.sqrt(np.maximum(a, b) ** 2 + max(vra.max(), vdec.max()))
    radius = config.scale * worst * (1.0 + 1e-9)
    group = np.ceil(np.log2(radius)).astype(np.int64)
    parts_p, parts_s = [], []
    for g in np.unique(group):
        sel = np.flatnonzero(group == g)
        q, s, _ = index.pairs(pra[sel], pdec[sel], float(radius[sel].max()))
        parts_p.append(sel[q])
        parts_s.append(s)
    p_idx = np.concatenate(parts_p)
    s_idx = np.concatenate(parts_s)
    m2, cost = _costs(p_idx, s_idx, pra, pdec, a, b, pa, sra, sdec, vra, vdec)
    keep = m2 <= config.scale**2
    p_idx, s_idx, cost = p_idx[keep], s_idx[keep], cost[keep]
    order = np.lexsort((s_idx, p_idx))
    return p_idx[order], s_idx[order], cost[order]


def mover_matches(
    pred_idx: np.ndarray,
    src_idx: np.ndarray,
    cost: np.ndarray,
    object_cost: np.ndarray | None = None,
    config: MoverConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The conclusive one-to-one (prediction, source) pairs among the candidates.

    Parameters
    ----------
    pred_idx, src_idx, cost : arrays
        From `mover_candidates`.
    object_cost : float array over the sources, optional
        Each source's cost against the known variable Object it matches
        (``position_cost``), ``inf`` where it matches none. A pair costing at
        least that is dropped. Pass ``-inf`` to keep a source out altogether.
    config : MoverConfig, optional
        ``ambiguity_margin`` is used.

    Returns
    -------
    pred_idx, src_idx : int64 arrays
        Sorted by prediction.
    """
    config = config or MoverConfig()
    p = np.asarray(pred_idx, dtype=np.int64)
    s = np.asarray(src_idx, dtype=np.int64)
    c = np.asarray(cost, dtype=np.float64)
    if object_cost is not None:
        keep = c < np.asarray(object_cost, dtype=np.float64)[s]
        p, s, c = p[keep], s[keep], c[keep]
    chosen = assign(p, s, c)
    comp = components(p, s)
    size = np.bincount(comp)
    conclusive = chosen.copy()
    for k in np.flatnonzero(chosen & (size[comp] > 1)):
        members = np.flatnonzero(comp == comp[k])
        n_best = int(chosen[members].sum())
        best = float(c[members][chosen[members]].sum())
        rest = members[members != k]
        again = assign(p[rest], s[rest], c[rest])
        if int(again.sum()) == n_best:
            conclusive[k] = c[rest][again].sum() - best >= config.ambiguity_margin
    order = np.argsort(p[conclusive], kind="stable")
    return p[conclusive][order], s[conclusive][order]


def warm_up() -> None:
    """Load (or compile) the movers' kernels now, not in the first visit."""
    ra, one = np.array([10.0, 10.0001, 10.0002]), np.ones(3)
    err = np.full(3, 1e-5, np.float32)
    p, s, c = mover_candidates(ra, np.zeros(3), one, one, one, ra, np.zeros(3), err, err)
    mover_matches(p, s, c, np.full(3, np.inf))
