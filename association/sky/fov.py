"""What a visit's events say about it: field of view, match radius, resources."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from events.envelope import Event
from events.types import DIASOURCES_READY, NEXT_VISIT

DEFAULT_FOV_RADIUS_DEG = 1.75
"""The LSST field of view is a circle of about this radius."""

RESOURCE_ORDER = 5
"""HEALPix order of the cells that tell whether two visits overlap."""

RESOURCE_PAD_DEG = 0.1
"""Padding of the field of view for overlap: wider than any margin."""


def fov_of(start: Event) -> tuple[float, float, float]:
    """Centre (ra, dec) and radius of a visit's field of view, in degrees."""
    body = start.body
    return float(body["ra"]), float(body["dec"]), float(body.get("radius", DEFAULT_FOV_RADIUS_DEG))


def fov_resources(start: Event) -> frozenset[Hashable]:
    """The sky cells a visit may read or change, for ordering overlapping visits."""
    from association.sky.healpix import ang2vec, query_disc

    ra, dec, radius = fov_of(start)
    vec = ang2vec(ra, dec, lonlat=True)
    cells = query_disc(
        1 << RESOURCE_ORDER, vec, np.radians(radius + RESOURCE_PAD_DEG), inclusive=True, nest=True
    )
    return frozenset(int(c) for c in cells)


def match_radius_arcsec(
    events: dict[str, Event],
    default: float,
    seeing_factor: float,
    lo: float,
    hi: float,
) -> tuple[float, str]:
    """The match radius and where it came from.

    The detection event's ``match_radius`` if it gives one; else
    ``seeing_factor`` times the visit's seeing, clamped to ``[lo, hi]``; else
    `default`.
    """
    det = events.get(DIASOURCES_READY)
    if det is not None and "match_radius" in det.body:
        return float(det.body["match_radius"]), "detection event"
    nv = events.get(NEXT_VISIT)
    if nv is not None and "seeing" in nv.body:
        return float(np.clip(seeing_factor * float(nv.body["seeing"]), lo, hi)), "seeing"
    return default, "config"


def angular_distance_deg(ra1: float, dec1: float, ra2: np.ndarray, dec2: np.ndarray) -> np.ndarray:
    """Great-circle distance from one point to many, in degrees (haversine)."""
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))
