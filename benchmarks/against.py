"""Run a benchmark's measurement on an earlier commit: a git worktree, a new process.

A benchmark script calls `against` with its own path and arguments; the
script, run again with ``--one-side`` and ``BENCH_CODE`` naming the
worktree, imports the pipeline from there (`code_root`) and prints its JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--against REV`` and the hidden ``--one-side``."""
    parser.add_argument("--against", default="HEAD", help="git revision to compare with")
    parser.add_argument("--one-side", action="store_true", help=argparse.SUPPRESS)


def compare(
    script: str,
    name: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict],
    ratios: Mapping[str, str],
    same: str,
    differ: str,
) -> None:
    """Print ``run`` here and on ``--against`` as JSON, with ``ratios`` of their figures.

    ``ratios`` maps a ratio's name to the figure it divides; ``same`` names the
    field saying both checksums agree; if they do not, exit with ``differ``.
    """
    sys.path.insert(0, code_root())
    if args.one_side:
        print(json.dumps(run(args)))
        return
    argv = [a for a in sys.argv[1:] if a != "--one-side"]
    mine = run(args)
    ref = against(script, args.against, argv)
    result = {
        "benchmark": name,
        "load_average": os.getloadavg()[0],
        "this_tree": mine,
        "against": ref,
        **{key: mine[figure] / ref[figure] for key, figure in ratios.items()},
        same: mine["checksum"] == ref["checksum"],
    }
    print(json.dumps(result, indent=2))
    if not result[same]:
        sys.exit(differ)
