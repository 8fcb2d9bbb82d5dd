"""What the compiled kernels of the matching share: numba options and angle wrapping."""

from __future__ import annotations

import numba as nb
import numpy as np

JIT = {"cache": True, "nogil": True}
"""Options of every kernel: cached on disk, run without the GIL."""

DEG = np.pi / 180.0
"""Radians per degree."""


@nb.njit(**JIT, inline="always")
def wrap180(x):
    """``x`` (deg) reduced to about [-180, 180]."""
    return x - 360.0 * np.floor((x + 180.0) * (1.0 / 360.0))


@nb.njit(**JIT, inline="always")
def wrap360(x):
    """``x`` (deg) reduced to [0, 360)."""
    return x - 360.0 * np.floor(x * (1.0 / 360.0))
