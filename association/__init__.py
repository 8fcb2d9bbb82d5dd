"""The association pipeline on the nightpipe framework, its nights and its command line."""

from __future__ import annotations

import os
from pathlib import Path


def _writable_numba_cache() -> None:
    # numba caches compiled kernels beside their modules; where the package
    # is read-only (a system install), it needs a directory of the user's.
    here = Path(__file__).parent
    if "NUMBA_CACHE_DIR" in os.environ or os.access(here, os.W_OK):
        return
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ["NUMBA_CACHE_DIR"] = str(base / "nightpipe" / "numba")


_writable_numba_cache()
