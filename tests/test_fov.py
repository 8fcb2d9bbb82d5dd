"""The sky cells of a visit, worked out on the master without healpy's heavy package."""

from __future__ import annotations

import subprocess
import sys

import healpy
import numpy as np

from association.sky.fov import RESOURCE_ORDER, RESOURCE_PAD_DEG, fov_resources
from events.envelope import Event
from events.types import NEXT_VISIT


def test_cells_are_healpys_query_disc():
    for ra, dec, radius in [(10.0, -30.0, 1.75), (359.9, 89.0, 3.9), (150.0, 2.0, 0.5)]:
        start = Event.new(NEXT_VISIT, 7, {"ra": ra, "dec": dec, "radius": radius, "mjd": 60218.0})
        vec = healpy.ang2vec(ra, dec, lonlat=True)
        want = healpy.query_disc(
            1 << RESOURCE_ORDER,
            vec,
            np.radians(radius + RESOURCE_PAD_DEG),
            inclusive=True,
            nest=True,
        )
        assert fov_resources(start) == frozenset(want.tolist())


def test_the_first_visit_does_not_import_matplotlib_or_astropys_fits():
    """The master's first start event once stalled 0.7-1.4 s importing healpy's whole package."""
    code = (
        "import sys\n"
        "from association.sky.fov import fov_resources\n"
        "from events.envelope import Event\n"
        "fov_resources(Event.new('telescope.next_visit', 1, {'ra': 1.0, 'dec': 2.0, 'mjd': 6e4}))\n"
        "print(sorted(m for m in ('matplotlib', 'astropy.io.fits', 'astropy.coordinates') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
