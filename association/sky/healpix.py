"""healpy's pixel functions, without the plotting and FITS modules its package imports.

``import healpy`` also imports matplotlib and astropy's FITS and coordinates:
about a second of CPU, paid by every rank of a pipeline that only needs pixel
indices. Here the package's pixel modules are imported under a stand-in for
the ``healpy`` package. The stand-in stays in ``sys.modules``; the first time
code asks it for anything else (``healpy.mollview``, ``healpy.__version__``)
it runs healpy's own ``__init__`` into itself, so a later ``import healpy``
anywhere gets the whole package as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


def _package() -> types.ModuleType:
    if "healpy" in sys.modules:
        return sys.modules["healpy"]
    spec = importlib.util.find_spec("healpy")
    if spec is None or spec.loader is None:
        raise ImportError("healpy is not installed: pip install healpy")
    stub = importlib.util.module_from_spec(spec)

    def complete(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module 'healpy' has no attribute {name!r}")
        if importlib.util.find_spec(f"healpy.{name}") is not None:
            return importlib.import_module(f"healpy.{name}")  # `from . import x` in healpy
        # Once: afterwards every name is the module's own attribute.
        del stub.__getattr__
        spec.loader.exec_module(stub)
        return getattr(stub, name)

    stub.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules["healpy"] = stub
    return stub


_package()
_pixel = importlib.import_module("healpy.pixelfunc")
_disc = importlib.import_module("healpy._query_disc")

ang2pix = _pixel.ang2pix
ang2vec = _pixel.ang2vec
get_all_neighbours = _pixel.get_all_neighbours
max_pixrad = _pixel.max_pixrad
nside2pixarea = _pixel.nside2pixarea
nside2resol = _pixel.nside2resol
pix2ang = _pixel.pix2ang
query_disc = _disc.query_disc

__all__ = [
    "ang2pix",
    "ang2vec",
    "get_all_neighbours",
    "max_pixrad",
    "nside2pixarea",
    "nside2resol",
    "pix2ang",
    "query_disc",
]
