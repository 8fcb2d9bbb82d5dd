"""A wall clock that can step under running processes, their monotonic clock left real.

The library is the build that the PyPI package ``libfaketime`` ships. Debian's
libfaketime 0.9.10 breaks Python 3.11's ``time.sleep`` when the monotonic
clock is not faked: it shifts the absolute CLOCK_MONOTONIC time that
``clock_nanosleep`` is given by the wall clock's offset, and the sleep fails
with EINVAL (libfaketime issue 426, fixed after 0.9.10).
"""

from __future__ import annotations

from pathlib import Path


def faketime_env(stamp: Path) -> dict[str, str]:
    """Environment under which a process's wall clock is offset by what `stamp` says.

    `stamp` holds an offset such as ``+0`` or ``+1h``, read again at every
    clock call, so writing to it steps the clock of processes already
    running; their monotonic clock stays real.
    """
    import libfaketime

    lib = Path(libfaketime.__file__).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    if not lib.exists():
        raise FileNotFoundError(f"{lib}: the libfaketime package ships no library there")
    return {
        "LD_PRELOAD": str(lib),
        "FAKETIME_TIMESTAMP_FILE": str(stamp),
        "FAKETIME_NO_CACHE": "1",
        "DONT_FAKE_MONOTONIC": "1",
    }
