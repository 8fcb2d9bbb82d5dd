"""Moving-object matching: predicted error ellipses against DIASources."""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from association.matching.compiled import DEG, JIT, wrap180
from association.matching.zoneindex import ZoneIndex


@dataclass(frozen=True)
class EllipseConfig:
    """How predicted 1-sigma error ellipses become match regions.

    Parameters
    ----------
    scale : float
        Number of sigmas: both semi-axes are multiplied by it ...
    min_axis_arcsec, max_axis_arcsec : float
        ... and then clamped to this range.
    """

    scale: float = 3.0
    min_axis_arcsec: float = 0.5
    max_axis_arcsec: float = 60.0

    def __post_init__(self) -> None:
        if not (self.scale > 0 and 0 < self.min_axis_arcsec <= self.max_axis_arcsec):
            raise ValueError(f"need scale > 0 and 0 < min_axis <= max_axis: {self}")

    def axes(
        self, semi_major_arcsec: np.ndarray, semi_minor_arcsec: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scaled and clamped semi-axes in arcsec."""
        lo, hi = self.min_axis_arcsec, self.max_axis_arcsec
        a = np.clip(self.scale * np.asarray(semi_major_arcsec, dtype=np.float64), lo, hi)
        b = np.clip(self.scale * np.asarray(semi_minor_arcsec, dtype=np.float64), lo, hi)
        return a, b


def ellipse_pairs(
    pred_ra: np.ndarray,
    pred_dec: np.ndarray,
    semi_major_arcsec: np.ndarray,
    semi_minor_arcsec: np.ndarray,
    position_angle_deg: np.ndarray,
    src_ra: np.ndarray,
    src_dec: np.ndarray,
    config: EllipseConfig | None = None,
    index: ZoneIndex | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All (prediction, source) pairs with the source inside the scaled ellipse.

    Inside-ness is decided in the tangent plane at the prediction (gnomonic;
    xi east, eta north); the major axis lies at ``position_angle_deg`` from
    north through east. Candidates come from a zone index over the sources
    (``index``, built here if not given; it must index ``src_ra, src_dec``)
    searched at the largest scaled semi-axis.

    Returns
    -------
    pred_idx, src_idx : int64 arrays
        Sorted by (pred_idx, src_idx).
    """
    config = config or EllipseConfig()
    pra = np.ascontiguousarray(pred_ra, dtype=np.float64)
    pdec = np.ascontiguousarray(pred_dec, dtype=np.float64)
    pa = np.ascontiguousarray(position_angle_deg, dtype=np.float64)
    sra = np.ascontiguousarray(src_ra, dtype=np.float64)
    sdec = np.ascontiguousarray(src_dec, dtype=np.float64)
    a, b = config.axes(semi_major_arcsec, semi_minor_arcsec)
    if not (pra.shape == pdec.shape == pa.shape == a.shape == b.shape and pra.ndim == 1):
        raise ValueError("prediction columns must be 1-d arrays of one length")
    if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(pa).all()):
        raise ValueError("prediction axes and position angles must be finite")
    empty = np.empty(0, np.int64)
    if pra.size == 0 or sra.size == 0:
        return empty, empty.copy()
    if index is None:
        index = ZoneIndex.build(sra, sdec, np.arange(sra.size, dtype=np.int64))
    elif len(index) != sra.size:
        raise ValueError(f"index holds {len(index)} rows, not the {sra.size} sources")
    # a point at tangent-plane distance rho is at angle atan(rho) <= rho
    radius = float(max(a.max(), b.max())) * (1.0 + 1e-9)
    pred_idx, src_idx, _ = index.pairs(pra, pdec, radius)
    to_rad = np.pi / (180.0 * 3600.0)
    inside = _inside_ellipse(pred_idx, src_idx, pra, pdec, a * to_rad, b * to_rad, pa, sra, sdec)
    return pred_idx[inside], src_idx[inside]


@nb.njit(**JIT)
def _inside_ellipse(pred_idx, src_idx, pra, pdec, a, b, pa, sra, sdec):
    """Whether each (prediction, source) pair lies inside the prediction's ellipse.

    Gnomonic projection at the prediction (xi east, eta north, radians); the
    ellipse has semi-axes ``a``, ``b`` (radians) and its major axis at position
    angle ``pa`` (deg, north through east).
    """
    n = pred_idx.size
    out = np.empty(n, np.bool_)
    for k in range(n):
        i = pred_idx[k]
        j = src_idx[k]
        d0 = DEG * pdec[i]
        d1 = DEG * sdec[j]
        da = DEG * wrap180(sra[j] - pra[i])
        sin_d0 = np.sin(d0)
        cos_d0 = np.cos(d0)
        cos_d1 = np.cos(d1)
        sh = np.sin(0.5 * da)
        one_minus_cos_da = 2.0 * sh * sh
        cos_c = sin_d0 * np.sin(d1) + cos_d0 * cos_d1 * np.cos(da)
        if cos_c <= 0.0:
            out[k] = False
            continue
        xi = cos_d1 * np.sin(da) / cos_c
        # cos d0 sin d1 - sin d0 cos d1 cos da, without cancellation
        eta = (np.sin(d1 - d0) + sin_d0 * cos_d1 * one_minus_cos_da) / cos_c
        sp = np.sin(DEG * pa[i])
        cp = np.cos(DEG * pa[i])
        u = (xi * sp + eta * cp) / a[i]
        v = (xi * cp - eta * sp) / b[i]
        out[k] = u * u + v * v <= 1.0
    return out


def conclusive_matches(
    pred_idx: np.ndarray, src_idx: np.ndarray, n_pred: int, n_src: int
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs whose match is conclusive.

    A pair is conclusive when its prediction's ellipse holds exactly one
    source and that source lies in no other prediction's ellipse.

    Returns
    -------
    pred_idx, src_idx : int64 arrays
        Sorted by prediction.
    """
    pred_idx = np.asarray(pred_idx, dtype=np.int64)
    src_idx = np.asarray(src_idx, dtype=np.int64)
    per_pred = np.bincount(pred_idx, minlength=n_pred)
    per_src = np.bincount(src_idx, minlength=n_src)
    keep = (per_pred[pred_idx] == 1) & (per_src[src_idx] == 1)
    order = np.argsort(pred_idx[keep], kind="stable")
    return pred_idx[keep][order], src_idx[keep][order]
