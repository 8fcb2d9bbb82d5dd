"""Run a benchmark's measurement on an earlier commit: a git worktree, a new process.

A benchmark script calls `against` with its own path and arguments; the
script, run again with ``--one-side`` and ``BENCH_CODE`` naming the
worktree, imports the pipeline from there (`code_root`) and prints its JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def code_root() -> str:
    """Where this side imports the pipeline from: the worktree, or this tree."""
    return os.environ.get("BENCH_CODE", str(ROOT))


def against(script: str, rev: str, argv: list[str]) -> dict:
    """``script --one-side argv`` on a git worktree of ``rev``; its JSON and the commit."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        git = ["git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "-q", "--detach", str(tree), rev], check=True)
        try:
            env = {**os.environ, "BENCH_CODE": str(tree)}
            out = subprocess.run(
                [sys.executable, script, *argv, "--one-side"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=True)
        commit = subprocess.run(
            [*git, "rev-parse", "--short", rev], check=True, capture_output=True, text=True
        )
    return {"commit": commit.stdout.strip(), **json.loads(out.stdout)}
