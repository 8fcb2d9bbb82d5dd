"""Status boards: key=value pairs per process, written atomically to one file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from framework.rundir import RunDir

OBSERVED = "observed"
"""Board key of the durations a rank observed: ``[[seq, name, seconds], ...]``, newest last."""
OBSERVED_KEEP = 256


class Board:
    """A process's status: a small dict of plain values, like a Hashpipe buffer."""

    def __init__(self, rank: int) -> None:
        self.values: dict[str, Any] = {
            "rank": rank,
            "pid": os.getpid(),
            "state": "starting",
            "started": time.time(),
        }
        self._seq = 0

    def set(self, **values: Any) -> None:
        """Set keys; `updated` is stamped."""
        self.values.update(values)
        self.values["updated"] = time.time()

    def incr(self, key: str, by: int = 1) -> None:
        """Add to a counter."""
        self.values[key] = self.values.get(key, 0) + by

    def observe(self, name: str, seconds: float) -> None:
        """Record one duration, e.g. ``observe("db_read", 0.012)``, for the master's metrics.

        It travels with every snapshot until `OBSERVED_KEEP` newer ones push it
        out; its sequence number lets the master count it once.
        """
        self._seq += 1
        kept = self.values.setdefault(OBSERVED, [])
        kept.append([self._seq, name, float(seconds)])
        del kept[:-OBSERVED_KEEP]

    def snapshot(self) -> dict[str, Any]:
        """A copy to send or write."""
        out = dict(self.values)
        if OBSERVED in out:
            out[OBSERVED] = list(out[OBSERVED])
        return out


def write_status(run_dir: Path, status: dict[str, Any]) -> None:
    """Write the combined board to ``RUN_DIR/status.json`` atomically."""
    path = RunDir(run_dir).status
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(status, default=str, indent=1))
    os.replace(tmp, path)


def read_status(run_dir: Path) -> dict[str, Any]:
    """Read the last status written in `run_dir`."""
    path = RunDir(run_dir).status
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no status yet (is a pipeline running there?)") from None


def process_alive(pid: Any) -> bool:
    """Whether process `pid` is alive on this machine (a zombie, ended but not reaped, is not)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except OSError:  # gone meanwhile, or no /proc (not Linux)
        return not Path("/proc/self").exists()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def effective_state(status: dict[str, Any]) -> str:
    """The pipeline's state as the file says, or ``dead`` if its master is gone without stopping."""
    state = str(status.get("state", "?"))
    if state not in ("stopped", "failed") and not process_alive(status.get("pid")):
        return "dead"
    return state


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def format_status(status: dict[str, Any], now: float | None = None) -> str:
    """A human view of a status file: one block per rank, then executions."""
    now = time.time() if now is None else now
    age = now - status.get("time", now)
    state = effective_state(status)
    lines = [
        f"pipeline {status.get('pipeline', '?')}  state={state}  "
        f"written {age:.1f} s ago  pid={status.get('pid', '?')}"
        + ("  (the master process is gone)" if state == "dead" else "")
    ]
    for key in (
        "in_flight",
        "queued_start",
        "done",
        "failed",
        "accepted",
        "rejected",
        "rate_per_min",
    ):
        if key in status:
            lines[-1] += f"  {key}={_fmt(status[key])}"
    for rank, board in sorted(status.get("ranks", {}).items(), key=lambda kv: int(kv[0])):
        role = "master" if int(rank) == 0 else f"slice {int(rank) - 1}"
        skip = {"rank", "started", "updated", "pid", OBSERVED}
        pairs = "  ".join(f"{k}={_fmt(v)}" for k, v in sorted(board.items()) if k not in skip)
        seen = now - board.get("updated", now)
        flag = "  HUNG" if board.get("state") == "hung" else ""
        lines.append(f"  rank {rank} ({role}, {seen:.1f} s ago){flag}: {pairs}")
    execs = status.get("executions", [])
    if execs:
        lines.append(f"  executions in flight ({len(execs)}):")
        for e in execs:
            lines.append(
                f"    fov {e['key']}: stage {e['stage']} {e['phase']}"
                + (f" (waits for {e['waiting_for']})" if e.get("waiting_for") else "")
                + (f" behind {e['behind']}" if e.get("behind") else "")
            )
    return "\n".join(lines)
