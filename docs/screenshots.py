"""Make the README's screenshots from a replayed demo night.

Simulates the demo's night (50 visits, seed 1), replays it at full speed into
a 3-rank pipeline while ``nightpipe serve``'s page is open in headless
Chromium, and takes the live page once about 60 % of the visits are done.
Then it runs the report and keeps its three plots. Every PNG is scaled down
(the page to `WIDTH` pixels, the plots to `PLOT_WIDTH`) and reduced to a
palette, and written to ``docs/``.

Usage: ``python docs/screenshots.py`` (needs Chromium, as ``make install`` sets up).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from association.nights.opsim import BUNDLED_DB  # noqa: E402
from association.nights.replay import Replayer, ReplayOptions  # noqa: E402
from association.nights.report import build_report, write_json, write_plots  # noqa: E402
from association.nights.serve import NightServer  # noqa: E402
from association.nights.simulate import SimConfig, simulate  # noqa: E402
from tests.browser import Browser  # noqa: E402

DOCS = ROOT / "docs"
WIDTH = 960
PLOT_WIDTH = 1200
LIVE_AT = 0.6
"""The live page is taken once this fraction of the visits is done."""
DONE = "Number(document.getElementById('visits-done').textContent)"


def small_png(src: Path, dst: Path, width: int = WIDTH) -> Path:
    """`src` scaled to `width` pixels wide and reduced to 256 colours, as `dst`."""
    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        im.quantize(256, method=Image.Quantize.FASTOCTREE).save(dst, optimize=True)
    return dst


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="nightpipe-shots-"))
    try:
        archive, run = work / "archive", work / "demo-night" / "run"  # the plots name the run
        simulate(BUNDLED_DB, archive, 60217.5, SimConfig(seed=1), None, 50, overwrite=True)
        outcome: dict[str, Any] = {}

        def night() -> None:
            try:
                outcome["summary"] = Replayer(ReplayOptions(archive=archive, run_dir=run)).run()
            except BaseException as exc:  # raised below
                outcome["error"] = exc

        server = NightServer(run, "127.0.0.1:0", refresh=0.25, min_interval=0.1)
        live = work / "live.png"
        with server, Browser(width=1280, height=1400) as browser:
            browser.navigate(server.url)
            player = threading.Thread(target=night)
            player.start()
            while player.is_alive():
                if browser.evaluate(DONE) >= LIVE_AT * 50 and not live.exists():
                    time.sleep(0.3)  # the plot's last points drawn
                    browser.screenshot(live)
                time.sleep(0.1)
            player.join()
        if "error" in outcome:
            raise outcome["error"]
        if not live.exists():
            raise RuntimeError("the night ended before the live page was taken")
        report = build_report(run)
        plots = write_plots(run, report)
        write_json(run, report)
        DOCS.mkdir(exist_ok=True)
        made = [small_png(live, DOCS / "night-page.png")]
        made += [small_png(p, DOCS / f"report-{p.name}", PLOT_WIDTH) for p in plots]
        for path in made:
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KiB")
        print(f"night: {outcome['summary']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
