"""Brute-force references for the cross-match and the prediction ellipses (for tests).

Plain numpy over every (query, object) pair, with formulas independent of the
kernels': angles from unit vectors as ``atan2(|u x v|, u . v)``, tangent-plane
coordinates by projecting onto the local east/north vectors.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 256  # queries per block, to bound memory


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    a = np.radians(np.asarray(ra, dtype=np.float64))
    d = np.radians(np.asarray(dec, dtype=np.float64))
    return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)


def angle_arcsec(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle between unit vectors (broadcast over leading axes), in arcsec."""
    cross = np.linalg.norm(np.cross(u, v), axis=-1)
    dot = np.sum(u * v, axis=-1)
    return np.degrees(np.arctan2(cross, dot)) * 3600.0


def separation_matrix(
    q_ra: np.ndarray, q_dec: np.ndarray, ra: np.ndarray, dec: np.ndarray
) -> np.ndarray:
    """(n_query, n_obj) angles in arcsec."""
    return angle_arcsec(_unit(q_ra, q_dec)[:, None, :], _unit(ra, dec)[None, :, :])


def brute_force_pairs(
    ra: np.ndarray, dec: np.ndarray, q_ra: np.ndarray, q_dec: np.ndarray, radius_arcsec: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (query, object) pairs with separation <= radius, sorted by (query_idx, obj_row)."""
    out_q, out_o, out_d = [], [], []
    for s in range(0, len(q_ra), _BLOCK):
        sep = separation_matrix(q_ra[s : s + _BLOCK], q_dec[s : s + _BLOCK], ra, dec)
        qi, oi = np.nonzero(sep <= radius_arcsec)
        out_q.append(qi + s)
        out_o.append(oi)
        out_d.append(sep[qi, oi])
    if not out_q:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return (
        np.concatenate(out_q).astype(np.int64),
        np.concatenate(out_o).astype(np.int64),
        np.concatenate(out_d),
    )


def brute_force_nearest(
    ra: np.ndarray,
    dec: np.ndarray,
    ids: np.ndarray,
    q_ra: np.ndarray,
    q_dec: np.ndarray,
    radius_arcsec: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest object row within the radius per query (-1 if none; ties to the smaller id)."""
    ids = np.asarray(ids)
    rows = np.full(len(q_ra), -1, np.int64)
    dist = np.full(len(q_ra), np.nan)
    q, o, d = brute_force_pairs(ra, dec, q_ra, q_dec, radius_arcsec)
    order = np.lexsort((ids[o], d, q))  # by query, then distance, then id
    q, o, d = q[order], o[order], d[order]
    first = np.ones(q.size, bool)
    first[1:] = q[1:] != q[:-1]
    rows[q[first]] = o[first]
    dist[q[first]] = d[first]
    return rows, dist


def tangent_plane(
    ra0: np.ndarray, dec0: np.ndarray, ra: np.ndarray, dec: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic (xi east, eta north) in radians of points about centres (broadcast)."""
    a0 = np.radians(np.asarray(ra0, dtype=np.float64))
    d0 = np.radians(np.asarray(dec0, dtype=np.float64))
    u0 = _unit(ra0, dec0)
    v = _unit(ra, dec)
    east = np.stack([-np.sin(a0), np.cos(a0), np.zeros_like(a0)], axis=-1)
    north = np.stack([-np.sin(d0) * np.cos(a0), -np.sin(d0) * np.sin(a0), np.cos(d0)], axis=-1)
    w = np.sum(v * u0, axis=-1)
    return np.sum(v * east, axis=-1) / w, np.sum(v * north, axis=-1) / w


def offset(ra: float, dec: float, xi: np.ndarray, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions at tangent-plane offsets (xi east, eta north; radians) from (ra, dec)."""
    a0, d0 = np.radians(ra), np.radians(dec)
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(rho > 0, np.sin(c) / rho, 1.0)
    d = np.arcsin(np.cos(c) * np.sin(d0) + eta * s * np.cos(d0))
    a = a0 + np.arctan2(xi * s, np.cos(d0) * np.cos(c) - eta * s * np.sin(d0))
    return np.degrees(a) % 360.0, np.degrees(d)


def ellipse_q(
    pred_ra: np.ndarray,
    pred_dec: np.ndarray,
    semi_major_arcsec: np.ndarray,
    semi_minor_arcsec: np.ndarray,
    position_angle_deg: np.ndarray,
    src_ra: np.ndarray,
    src_dec: np.ndarray,
    scale: float = 1.0,
) -> np.ndarray:
    """(n_pred, n_src) quadratic form of the ellipse of axes ``scale * (a, b)``.

    Inside where <= 1 (inf behind the plane).
    """
    a = scale * np.asarray(semi_major_arcsec, dtype=np.float64)
    b = scale * np.asarray(semi_minor_arcsec, dtype=np.float64)
    to_rad = np.pi / (180.0 * 3600.0)
    col = (slice(None), None)
    xi, eta = tangent_plane(
        np.asarray(pred_ra)[col], np.asarray(pred_dec)[col], src_ra[None, :], src_dec[None, :]
    )
    pa = np.radians(np.asarray(position_angle_deg, dtype=np.float64))[col]
    u = (xi * np.sin(pa) + eta * np.cos(pa)) / (a * to_rad)[col]
    v = (xi * np.cos(pa) - eta * np.sin(pa)) / (b * to_rad)[col]
    w = np.sum(_unit(pred_ra, pred_dec)[:, None, :] * _unit(src_ra, src_dec)[None, :, :], -1)
    return np.where(w > 0, u * u + v * v, np.inf)


def brute_force_ellipse_pairs(
    pred_ra: np.ndarray,
    pred_dec: np.ndarray,
    semi_major_arcsec: np.ndarray,
    semi_minor_arcsec: np.ndarray,
    position_angle_deg: np.ndarray,
    src_ra: np.ndarray,
    src_dec: np.ndarray,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """All (prediction, source) pairs inside the scaled ellipse, sorted."""
    q = ellipse_q(
        pred_ra, pred_dec, semi_major_arcsec, semi_minor_arcsec, position_angle_deg,
        np.asarray(src_ra, dtype=np.float64), np.asarray(src_dec, dtype=np.float64), scale,
    )  # fmt: skip
    p, s = np.nonzero(q <= 1.0)
    return p.astype(np.int64), s.astype(np.int64)
