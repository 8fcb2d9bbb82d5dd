"""Stages for runtime tests: they record what ran where and when, and fail on demand."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from framework.stage import Background, Later, Stage


@dataclass(frozen=True)
class TraceConfig:
    sleep: float = 0.0
    fail_fov: int = -1
    fail_slice: int = -1
    fail_hook: str = "process"
    array_size: int = 1000
    later_fov: int = -1  # this fov's preprocess runs in a thread, `later_s` long
    later_s: float = 0.0
    observe: str = ""  # process reports its sleep as a duration of this name (Board.observe)
    background_fov: int = -1  # this fov's process returns a `Background` of `background_s`
    background_s: float = 0.0
    background_fail: str = ""  # "work" or "then": that part raises


class Trace(Stage):
    """Records start/end of every hook in RUN_DIR/trace.RANK.jsonl (monotonic ns)."""

    ConfigClass = TraceConfig

    def _rec(self, ctx, what: str, **extra) -> None:
        line = {
            "t": time.monotonic_ns(),
            "rank": ctx.rank,
            "fov": getattr(ctx, "key", None),
            "stage": self.name,
            "what": what,
            **extra,
        }
        with open(Path(ctx.run_dir) / f"trace.{ctx.rank}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

    def _maybe_fail(self, ctx, hook: str) -> None:
        c = self.config
        mine = hook != "process" or c.fail_slice in (-1, ctx.slice_index)
        if c.fail_hook == hook and ctx.key == c.fail_fov and mine:
            raise RuntimeError(f"injected failure in {self.name}.{hook} for fov {ctx.key}")

    def setup(self, ctx) -> None:
        self._pool = ThreadPoolExecutor(1)
        self._rec(ctx, "setup")

    def preprocess(self, ctx):
        if ctx.key == self.config.later_fov:
            return Later(self._pool.submit(self._later, ctx))
        self._maybe_fail(ctx, "preprocess")
        self._rec(ctx, "pre")
        return {"stage": self.name, "fov": ctx.key}

    def _later(self, ctx):
        time.sleep(self.config.later_s)
        self._maybe_fail(ctx, "preprocess")
        self._rec(ctx, "pre", later=True)
        return {"stage": self.name, "fov": ctx.key}

    def process(self, ctx, payload):
        if ctx.key == self.config.background_fov:
            return self._background(ctx, payload)
        self._rec(ctx, "start")
        assert payload["fov"] == ctx.key, payload
        ctx.clipboard.setdefault("stages", []).append(self.name)
        if self.config.sleep:
            time.sleep(self.config.sleep)
        if self.config.observe:
            ctx.board.observe(self.config.observe, self.config.sleep)
        self._maybe_fail(ctx, "process")
        arr = np.arange(self.config.array_size, dtype="f8") * ctx.slice_index
        self._rec(ctx, "end")
        return {
            "slice": ctx.slice_index,
            "fov": ctx.key,
            "arr": arr,
            "seen": list(ctx.clipboard["stages"]),
        }

    def _background(self, ctx, payload) -> Background:
        self._rec(ctx, "start", background=True)
        c = self.config

        def work() -> np.ndarray:
            time.sleep(c.background_s)
            if c.background_fail == "work":
                raise RuntimeError(f"injected failure in {self.name} background work")
            return np.arange(c.array_size, dtype="f8") * ctx.slice_index

        def then(arr: np.ndarray) -> dict:
            if c.background_fail == "then":
                raise RuntimeError(f"injected failure in {self.name} background then")
            self._rec(ctx, "end", background=True)
            return {"slice": ctx.slice_index, "fov": ctx.key, "arr": arr, "seen": []}

        return Background(work, then)

    def postprocess(self, ctx, results):
        self._maybe_fail(ctx, "postprocess")
        slices = sorted(r["slice"] for r in results)
        ok = slices == list(range(ctx.n_slices)) and all(
            r["fov"] == ctx.key and float(r["arr"][-1]) == (self.config.array_size - 1) * r["slice"]
            for r in results
        )
        self._rec(ctx, "post", slices=slices, ok=ok)
        ctx.count("postprocessed", 1)
        if not ok:
            raise AssertionError(f"postprocess saw {results!r}")

    def finish(self, ctx, ok: bool) -> None:
        self._rec(ctx, "finish", ok=ok)

    def shutdown(self, ctx) -> None:
        self._pool.shutdown()
        self._rec(ctx, "shutdown")


def read_trace(run_dir: Path) -> list[dict]:
    """Every trace line of every rank, in time order."""
    lines = []
    for p in Path(run_dir).glob("trace.*.jsonl"):
        lines += [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return sorted(lines, key=lambda d: d["t"])


def check_barriers(trace: list[dict], stages: list[str], n_slices: int) -> int:
    """Assert no Slice starts stage k+1 of a fov before every Slice ended stage k and
    the master's postprocess of k ran. Returns how many stage transitions were checked."""
    checked = 0
    fovs = {d["fov"] for d in trace if d["what"] == "start"}
    for fov in fovs:
        ev = [d for d in trace if d["fov"] == fov]
        for k in range(len(stages) - 1):
            ends = [d["t"] for d in ev if d["stage"] == stages[k] and d["what"] == "end"]
            posts = [d["t"] for d in ev if d["stage"] == stages[k] and d["what"] == "post"]
            starts = [d["t"] for d in ev if d["stage"] == stages[k + 1] and d["what"] == "start"]
            if not starts:
                continue
            assert len(ends) == n_slices, (fov, stages[k], ends)
            assert len(posts) == 1, (fov, stages[k], posts)
            assert min(starts) > max(ends), (
                f"fov {fov}: {stages[k + 1]} started before {stages[k]} ended"
            )
            assert min(starts) > posts[0], f"fov {fov}: {stages[k + 1]} started before postprocess"
            checked += 1
    return checked


def config_text(stages: list[dict], runtime: dict | None = None, **pipeline) -> str:
    """A TOML pipeline of Trace stages. Each dict: name, wait (optional), config (optional).

    `runtime` adds keys to its ``[runtime]`` table, `pipeline` to its ``[pipeline]`` table.
    """
    here = Path(__file__).resolve()
    pipe = {"name": "trace", "start": "telescope.next_visit", "max_in_flight": 8, **pipeline}
    out = ["[pipeline]"]
    out += [f"{k} = {json.dumps(v)}" for k, v in pipe.items()]
    out += ["", "[runtime]", 'endpoint = "tcp://127.0.0.1:0"', "status_interval = 0.2"]
    out += [f"{k} = {json.dumps(v)}" for k, v in (runtime or {}).items()]
    out.append("")
    for s in stages:
        out.append("[[stages]]")
        out.append(f'name = "{s["name"]}"')
        out.append(f'class = "{here}:Trace"')
        if "wait" in s:
            w = s["wait"]
            out.append(
                f'wait = {{ event = "{w["event"]}", timeout = {w["timeout"]}, policy = "{w["policy"]}" }}'
            )
        cfg = s.get("config", {})
        if cfg:
            out.append(
                "config = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in cfg.items()) + " }"
            )
        out.append("")
    return "\n".join(out)
