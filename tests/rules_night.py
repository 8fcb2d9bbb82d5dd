"""A hand-made night archive that holds each fault of issue 9 in a known place.

Five visits on a sky of preloaded Objects near (RA, Dec) = (150, 2):

- visits 1 and 2: one field, exposures 80 s apart (back to back);
- visit 3: the same field 30 minutes later;
- visit 4: the same field again, hours later;
- visit 5: a big field, 47 deg^2, on a sparse sky.

Its scenes, and what the pipeline must do with them:

- ``twins``: two DIASources 0.1" and 0.3" from one Object in one visit: the
  nearer pairs with it, the other makes a new Object;
- ``star``: a known variable star 15" from the centre of a prediction whose
  1-sigma ellipse is 20" x 20", its asteroid not detected: the star keeps it;
- ``flare``: a star the catalogue calls steady flares in visit 1, so its flux
  history makes it variable; in visit 4 it lies inside a large ellipse: kept;
- ``wide``: a prediction whose 1-sigma ellipse is 25" x 10" holds its asteroid
  62" out along the major axis (2.5 sigma, beyond the old 60" cap): matched;
- ``pair``: an asteroid predicted in both back-to-back exposures: matched
  both times, no Object made;
- ``slow``: a slow asteroid not predicted in the pair (its two detections make
  one Object that is not variable), predicted 30 minutes later and 0.1" on:
  matched to the prediction, not captured by that Object;
- ``borders``: pairs of Objects 0.4" apart on either side of chunk borders,
  with three DIASources about each pair: components that span chunks of
  different Slices;
- ``sparse``: Objects scattered over the big field, each detected once there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from association.nights.simulate import unix_time
from association.sky.partition import Partition
from events.archive import ArchiveWriter
from events.envelope import Event
from events.types import DIASOURCES_READY, NEXT_VISIT, PREDICTIONS_READY
from tests.oracles.reference import offset

RA0, DEC0 = 150.0, 2.0
MJD0 = 60217.1
ARCSEC = np.radians(1 / 3600)
SIGMA_ARCSEC = 0.05  # the DIASources' position errors
BIG_RADIUS_DEG = float(np.degrees(np.arccos(1 - 47 / (2 * np.pi * np.degrees(1) ** 2))))
VISITS = {  # fov id: (mjd, radius deg)
    1: (MJD0, 1.75),
    2: (MJD0 + 80 / 86400, 1.75),
    3: (MJD0 + 30 / 1440, 1.75),
    4: (MJD0 + 0.2, 1.75),
    5: (MJD0 + 0.3, BIG_RADIUS_DEG),
}
BIG_CENTRE = (RA0 + 20.0, DEC0)


def at(east_arcsec, north_arcsec, centre=(RA0, DEC0)) -> tuple[np.ndarray, np.ndarray]:
    """Positions at (east, north) arcsec in the tangent plane at ``centre``."""
    e = np.atleast_1d(np.asarray(east_arcsec, float)) * ARCSEC
    n = np.atleast_1d(np.asarray(north_arcsec, float)) * ARCSEC
    return offset(*centre, e, n)


@dataclass
class Night:
    """The archive's ids, by scene."""

    path: Path
    ids: dict[str, dict[str, int]] = field(default_factory=dict)
    borders: list[tuple[int, int, list[int]]] = field(default_factory=list)
    """Per border pair: Object a, Object b, and the visits' DIASources about them."""
    sparse: dict[int, int] = field(default_factory=dict)
    """diaSourceId -> its Object, in the big field."""


class _Builder:
    def __init__(self) -> None:
        self.objects: list[dict] = []
        self.history: list[dict] = []
        self.sources: dict[int, list[dict]] = {v: [] for v in VISITS}
        self.predictions: dict[int, list[dict]] = {v: [] for v in VISITS}
        self.next_object = 1_000
        self.next_source = 10_000_000

    def obj(self, ra: float, dec: float, fluxes=(1000.0,), variable=False) -> int:
        oid = self.next_object
        self.next_object += 1
        mjd = MJD0 - 30 - np.arange(len(fluxes))[::-1]
        for f, t in zip(fluxes, mjd, strict=True):
            self.history.append(
                {"diaSourceId": 500_000 + len(self.history), "diaObjectId": oid, "ra": ra,
                 "dec": dec, "midpointMjdTai": t, "band": "r", "psfFlux": f,
                 "psfFluxErr": 10.0, "raErr": SIGMA_ARCSEC / 3600, "decErr": SIGMA_ARCSEC / 3600}
            )  # fmt: skip
        f = np.asarray(fluxes, float)
        self.objects.append(
            {"diaObjectId": oid, "ra": ra, "dec": dec, "nDiaSources": len(fluxes),
             "firstMjd": mjd[0], "lastMjd": mjd[-1], "isVariable": variable,
             "raErr": SIGMA_ARCSEC / 3600 / np.sqrt(len(fluxes)),
             "decErr": SIGMA_ARCSEC / 3600 / np.sqrt(len(fluxes)),
             "r_psfFluxNdata": len(f), "r_psfFluxMean": f.mean(),
             "r_psfFluxM2": np.sum((f - f.mean()) ** 2), "r_psfFluxWMean": f.mean(),
             "r_psfFluxMeanErr": 10.0 / np.sqrt(len(f)),
             "r_psfFluxChi2": np.sum((f - f.mean()) ** 2) / 100.0}
        )  # fmt: skip
        return oid

    def src(self, visit: int, ra: float, dec: float, flux: float = 1000.0) -> int:
        sid = self.next_source
        self.next_source += 1
        self.sources[visit].append(
            {"diaSourceId": sid, "ra": ra, "dec": dec, "midpointMjdTai": VISITS[visit][0],
             "band": "r", "psfFlux": flux, "psfFluxErr": 10.0,
             "raErr": SIGMA_ARCSEC / 3600, "decErr": SIGMA_ARCSEC / 3600, "snr": flux / 10.0}
        )  # fmt: skip
        return sid

    def pred(self, visit: int, ss: int, ra: float, dec: float, a: float, b: float, pa: float):
        self.predictions[visit].append(
            {"ssObjectId": ss, "ra": ra, "dec": dec, "semiMajorAxis": a, "semiMinorAxis": b,
             "positionAngle": pa, "predictedMag": 20.0, "mjd": VISITS[visit][0]}
        )  # fmt: skip


def _at(east_arcsec: float, north_arcsec: float, centre=(RA0, DEC0)) -> tuple[float, float]:
    """One position, as `at`."""
    ra, dec = at(east_arcsec, north_arcsec, centre)
    return float(ra[0]), float(dec[0])


def _chunk_borders(partition: Partition, n: int) -> list[tuple[float, float, float]]:
    """Chunk borders seen from the field centre in ``n`` directions.

    Each: its distance (arcsec) along the direction (unit east, north).
    """
    out = []
    steps = np.arange(1, 4000) * 1.0  # arcsec
    for theta in np.linspace(0, 2 * np.pi, n, endpoint=False):
        e, nn = np.sin(theta), np.cos(theta)
        ra, dec = at(steps * e + 300 * e, steps * nn + 300 * nn)
        chunk = partition.chunk_of(ra, dec)
        k = int(np.flatnonzero(chunk[1:] != chunk[:-1])[0])
        lo, hi = steps[k] + 300, steps[k + 1] + 300
        for _ in range(40):  # the border to a fraction of a milliarcsec
            mid = 0.5 * (lo + hi)
            c = partition.chunk_of(*at(mid * e, mid * nn))
            lo, hi = (mid, hi) if c[0] == chunk[k] else (lo, mid)
        out.append((0.5 * (lo + hi), e, nn))
    return out


def make_rules_night(path: Path) -> Night:
    """Write the archive; return where each scene's ids are."""
    b = _Builder()
    night = Night(path)
    # twins: two DIASources near one Object
    o = b.obj(*_at(-900, 0))
    near = b.src(1, *_at(-899.9, 0))
    far = b.src(1, *_at(-900.3, 0))
    night.ids["twins"] = {"object": o, "near": near, "far": far}
    # star: a known variable (its history varies), inside a large ellipse
    star = b.obj(*_at(600, 600), fluxes=(1000.0, 1400.0, 800.0, 1300.0), variable=True)
    star_src = b.src(1, *_at(600.03, 600.0), flux=1500.0)
    b.pred(1, 71, *_at(585, 600), 20.0, 20.0, 0.0)
    night.ids["star"] = {"object": star, "source": star_src, "ss": 71}
    # flare: steady in the catalogue (not variable); it flares in visit 1, so
    # its flux history makes it variable, and visit 4 finds it inside a
    # large ellipse: it keeps its DIASource
    flare = b.obj(*_at(0, 900), fluxes=(1000.0, 1005.0, 995.0))
    first = b.src(1, *_at(0.02, 900.0), flux=3000.0)
    later = b.src(4, *_at(-0.02, 900.01), flux=2500.0)
    b.pred(4, 75, *_at(-15, 900), 20.0, 20.0, 0.0)
    night.ids["flare"] = {"object": flare, "first": first, "later": later, "ss": 75}
    # wide: a 3-sigma ellipse beyond 60" holding its source
    pa = np.radians(30.0)
    wide = b.src(1, *_at(-600 + 62 * np.sin(pa), -600 + 62 * np.cos(pa)))
    b.pred(1, 72, *_at(-600, -600), 25.0, 10.0, 30.0)
    night.ids["wide"] = {"source": wide, "ss": 72}
    # pair: an asteroid at 0.25"/min, predicted in both back-to-back exposures
    ids = []
    for visit, minutes in ((1, 0.0), (2, 80 / 60)):
        east = 300 + 0.25 * minutes
        ids.append(b.src(visit, *_at(east, -300)))
        b.pred(visit, 73, *_at(east + 0.3, -300.2), 1.0, 0.6, 45.0)
    night.ids["pair"] = {"first": ids[0], "second": ids[1], "ss": 73}
    # slow: 0.2"/hour; not predicted in the pair (its detections make one
    # Object), predicted 30 minutes on, 0.1" from that Object: were the
    # Object variable, it would capture the detection
    ids = []
    for visit, minutes in ((1, 0.0), (2, 80 / 60), (3, 30.0)):
        ids.append(b.src(visit, *_at(-300 + 0.2 * minutes / 60, 300)))
    b.pred(3, 74, *_at(-299.9 + 0.8, 300.6), 2.0, 2.0, 0.0)
    night.ids["slow"] = {"first": ids[0], "second": ids[1], "third": ids[2], "ss": 74}
    # borders: a pair of Objects across each of several chunk borders, three
    # DIASources about them in visits 1 and 3
    partition = Partition()
    scenes = np.array([(-900, 0), (600, 600), (0, 900), (-600, -600), (300, -300), (-300, 300)])
    for r, e, n in _chunk_borders(partition, 12):
        if np.hypot(*(scenes - [r * e, r * n]).T).min() < 150:
            continue  # keep the scenes apart
        pos = [_at((r + d) * e, (r + d) * n) for d in (-0.2, 0.2)]
        a, c = b.obj(*pos[0]), b.obj(*pos[1])
        assert partition.chunk_of(*pos[0]) != partition.chunk_of(*pos[1])
        srcs = []
        for visit, shift in ((1, 0.0), (3, 0.02)):
            for d in (-0.15, 0.1, 0.45):
                srcs.append(b.src(visit, *_at((r + d + shift) * e, (r + d + shift) * n)))
        night.borders.append((a, c, srcs))
    assert len(night.borders) >= 8
    # sparse: Objects over the big field, each detected once there
    rng = np.random.default_rng(9)
    radius = np.radians(BIG_RADIUS_DEG - 0.05) * np.sqrt(rng.random(120))
    theta = rng.uniform(0, 2 * np.pi, 120)
    ra, dec = offset(*BIG_CENTRE, radius * np.sin(theta), radius * np.cos(theta))
    for k in range(120):
        oid = b.obj(float(ra[k]), float(dec[k]))
        if k % 3 == 0:
            night.sparse[b.src(5, *_at(0.05, -0.05, (float(ra[k]), float(dec[k]))))] = oid
    _write(b, path)
    return night


def _table(rows: list[dict], types: dict[str, str] | None = None) -> pa.Table:
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    return pa.table({k: np.asarray(v, (types or {}).get(k)) for k, v in cols.items()})


def _write(b: _Builder, path: Path) -> None:
    out = ArchiveWriter(path, overwrite=True)
    pq.write_table(_table(b.objects), out.path_for("catalogue/objects.parquet"))
    pq.write_table(_table(b.history), out.path_for("catalogue/diasources.parquet"))
    for visit, (mjd, radius) in VISITS.items():
        centre = BIG_CENTRE if visit == 5 else (RA0, DEC0)
        src_rel = f"data/visit_{visit}_diasources.parquet"
        pq.write_table(_table(b.sources[visit]), out.path_for(src_rel))
        bodies = [
            (NEXT_VISIT, -30.0, {"mjd": mjd, "ra": centre[0], "dec": centre[1], "filter": "r",
                                 "seeing": 1.0, "radius": radius}),
            (DIASOURCES_READY, 60.0, {"paths": [src_rel]}),
        ]  # fmt: skip
        if b.predictions[visit]:
            pred_rel = f"data/visit_{visit}_predictions.parquet"
            types = {"ssObjectId": "i8", "semiMajorAxis": "f4", "semiMinorAxis": "f4"}
            pq.write_table(_table(b.predictions[visit], types), out.path_for(pred_rel))
            bodies.append((PREDICTIONS_READY, 61.0, {"paths": [pred_rel]}))
        else:
            bodies.append((PREDICTIONS_READY, 61.0, {"paths": []}))
        for kind, dt, body in bodies:
            t = round(float(unix_time(mjd)) + dt, 3)
            out.add_event(Event.new(kind, visit, body, "rules", t, f"{kind}-{visit}"))
    out.write_manifest(
        source={"what": "issue 9's faults, by hand"},
        catalogue_objects="catalogue/objects.parquet",
        catalogue_diasources="catalogue/diasources.parquet",
    )
