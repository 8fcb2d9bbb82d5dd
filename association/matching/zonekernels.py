"""Compiled kernels of the zone index (`association.matching.zoneindex`).

The index is a grid of cells: zones of fixed height in dec, each cut into the
same number of columns in a rotated RA (``(ra - ra0) mod 360``, with ``ra0``
in the largest RA gap of the data, so a field at RA 0/360 is one compact
block). A two-pass radix sort lists the objects cell by cell; ``offsets``
holds each cell's start. Each listed row also carries where its object lies
in the cell, so a query skips most candidates without loading their
positions. A query visits, zone by zone, the columns its disc can reach (all
of them when the disc holds a pole), prunes on those in-cell codes, then on
dec and RA offsets, and decides with the haversine formula, which is well
conditioned for tiny angles. Positions outside the layout (which is shaped
from a sample) fall into the edge cells, which the queries' clamped ranges
also visit.

Every kernel either works per query (no shared writes) or per fixed block of
the input in block order, so results never depend on the number of threads.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from association.matching.compiled import DEG, JIT, wrap180, wrap360

_PAD_DEG = 1e-9  # slack on search ranges; the haversine test decides
N_RA_BINS = 3600  # RA histogram used to find the data's largest RA gap

# An index entry packs the input row (bits 0-30) with where the object lies in
# its cell, in 1/256ths of the cell's width (bits 31-38) and height (39-46),
# so a query prunes most candidates without loading their positions.
ROW_MASK = (1 << 31) - 1
_CODES = 0xFFFF << 31
_LOCAL_SHIFT = 47  # while the build deals entries into buckets: the local cell


@nb.njit(**JIT, inline="always")
def _zone(dec, zone0, inv_h, nz):
    return min(max(np.int64(np.floor((dec + 90.0) * inv_h) - zone0), 0), nz - 1)


@nb.njit(**JIT, inline="always")
def _zcode(dec, zone0, inv_h, z):
    # where dec lies in zone z, in 1/256ths of its height (clamped to -1..256)
    f = ((dec + 90.0) * inv_h - (zone0 + z)) * 256.0
    return np.int64(np.floor(min(max(f, -1.0), 256.0)))


@nb.njit(**JIT, inline="always")
def _col(ra_rot, ra_lo, inv_w, nc):
    return min(max(np.int64(np.floor((ra_rot - ra_lo) * inv_w)), 0), nc - 1)


@nb.njit(**JIT, inline="always")
def _ccode(ra_rot, ra_lo, inv_w, c):
    # where a rotated RA lies in column c, in 1/256ths of its width (-1..256)
    f = ((ra_rot - ra_lo) * inv_w - c) * 256.0
    return np.int64(np.floor(min(max(f, -1.0), 256.0)))


@nb.njit(**JIT)
def sample_stats(ra, dec, step):
    """RA histogram (``N_RA_BINS`` bins) and dec min/max of every ``step``-th row.

    Only shapes the index; rows that are not finite or out of range are skipped.
    """
    hist = np.zeros(N_RA_BINS, np.int64)
    dmin = np.inf
    dmax = -np.inf
    for i in range(0, ra.size, step):
        r = ra[i]
        d = dec[i]
        if np.isfinite(r) and d >= -90.0 and d <= 90.0:
            b = np.int64(wrap360(r) * (N_RA_BINS / 360.0))
            hist[min(max(b, 0), N_RA_BINS - 1)] += 1
            dmin = min(dmin, d)
            dmax = max(dmax, d)
    return hist, dmin, dmax


@nb.njit(**JIT, inline="always")
def _cell_code(r, d, ra0, ra_lo, inv_w, zone0, inv_h, nz, nc):
    # (cell << 16) | (dec code << 8) | RA code of a position, -1 if it is not
    # finite or |d| > 90; branch-free, so the loop over rows vectorises
    ok = (r - r == 0.0) & (d >= -90.0) & (d <= 90.0)
    z = _zone(d, zone0, inv_h, nz)
    rot = wrap360(r - ra0)
    c = _col(rot, ra_lo, inv_w, nc)
    dcode = min(max(_zcode(d, zone0, inv_h, z), 0), 255)
    rcode = min(max(_ccode(rot, ra_lo, inv_w, c), 0), 255)
    return ((z * nc + c) << 16) | (dcode << 8) | rcode if ok else -1


_BUCKET_ROWS = 8192  # aim of the build's first pass: buckets that fit in L2

# The block helpers take views and loop from 0: numba then knows the index is
# not negative, and the loops compile tight (the first one vectorises).


@nb.njit(**JIT)
def _keys_block(ra, dec, geo, keys):
    # keys = (cell << 16) | code of each position
    ra0, ra_lo, inv_w, zone0, inv_h = geo[0], geo[1], 1.0 / geo[3], geo[4], 1.0 / geo[5]
    nz = np.int64(geo[6])
    nc = np.int64(geo[7])
    for j in range(keys.size):
        keys[j] = _cell_code(ra[j], dec[j], ra0, ra_lo, inv_w, zone0, inv_h, nz, nc)


@nb.njit(**JIT)
def _count_block(keys, shift, cnt):
    # add the keys' bucket counts to cnt; return the number of bad keys
    bad = 0
    for j in range(keys.size):
        key = keys[j]
        if key < 0:
            bad += 1
        else:
            cnt[key >> (16 + shift)] += 1
    return bad


@nb.njit(**JIT)
def _deal_block(keys, row0, shift, nxt, tmp):
    # deal rows row0.. into their buckets' next free slots of tmp, as index
    # entries with the local cell above them
    lmask = (1 << shift) - 1
    for j in range(keys.size):
        key = keys[j]
        b = key >> (16 + shift)
        p = nxt[b]
        nxt[b] = p + 1
        tmp[p] = (((key >> 16) & lmask) << _LOCAL_SHIFT) | ((key & 0xFFFF) << 31) | (row0 + j)


@nb.njit(**JIT)
def _sort_bucket(tmp, rows, start, offsets):
    # counting sort of a bucket (tmp, at `start` in the index) into rows,
    # writing its cells' offsets
    local = np.zeros(offsets.size, np.int64)
    for p in range(tmp.size):
        local[tmp[p] >> _LOCAL_SHIFT] += 1
    run = 0
    for j in range(local.size):
        here = local[j]
        offsets[j] = start + run
        local[j] = run
        run += here
    for p in range(tmp.size):
        e = tmp[p]
        j = e >> _LOCAL_SHIFT
        q = local[j]
        local[j] = q + 1
        rows[q] = e & (_CODES | ROW_MASK)


@nb.njit(**JIT, parallel=True)
def build_cells(ra, dec, geo, nt, tmp, rows, offsets):
    """Sort objects by cell; return the count of invalid positions.

    Fills ``rows`` (packed input rows, cell by cell) and ``offsets``
    (``ncell + 1`` cell starts); ``tmp`` is scratch of the same size. A
    two-pass radix sort: the first pass deals rows into buckets of
    consecutive cells (few, sequential write streams), the second sorts each
    bucket by cell in cache. Each of ``nt`` threads deals one fixed block of
    the input, blocks in order, so both passes are stable and the result
    does not depend on ``nt``. Positions outside the geometry go to the edge
    cells.
    """
    n = ra.size
    ncell = np.int64(geo[6]) * np.int64(geo[7])
    shift = 0  # cells per bucket: 2**shift <= 2**16, the width of a local cell
    while shift < 16 and (ncell >> shift) * _BUCKET_ROWS > n:
        shift += 1
    nbkt = ((ncell - 1) >> shift) + 1
    keys = rows  # rows holds each row's (cell << 16) | code until the last pass
    counts = np.zeros((nt, nbkt), np.int64)
    nbad = np.zeros(nt, np.int64)
    for t in nb.prange(nt):
        lo, hi = t * n // nt, (t + 1) * n // nt
        _keys_block(ra[lo:hi], dec[lo:hi], geo, keys[lo:hi])
        nbad[t] = _count_block(keys[lo:hi], shift, counts[t])
    if nbad.sum() > 0:
        return nbad.sum()
    bstart = np.empty(nbkt + 1, np.int64)
    run = 0  # bucket starts, and each thread's start within each bucket
    for b in range(nbkt):
        bstart[b] = run
        for t in range(nt):
            here = counts[t, b]
            counts[t, b] = run
            run += here
    bstart[nbkt] = n
    for t in nb.prange(nt):
        lo, hi = t * n // nt, (t + 1) * n // nt
        _deal_block(keys[lo:hi], lo, shift, counts[t], tmp)
    for b in nb.prange(nbkt):
        lo, hi = bstart[b], bstart[b + 1]
        c0 = b << shift
        c1 = min(c0 + (1 << shift), ncell)
        _sort_bucket(tmp[lo:hi], rows[lo:hi], lo, offsets[c0:c1])
    offsets[ncell] = n
    return 0


@nb.njit(**JIT)
def _ra_pieces(ra, cosd, sin_r, ra0, ra_lo, col_w, nc, pole):
    # The rotated-RA pieces a disc of radius r around (ra, dec) can reach: at
    # most two, disjoint, ascending, each as (first col, last col, lo, hi);
    # an empty second piece has last col < first col. Also the disc's RA
    # half-width in degrees (360: it reaches every RA, and lo, hi are moot).
    s = sin_r / cosd if cosd > 0.0 else 2.0
    everything = (0, nc - 1, -1e300, 1e300, 0, -1, 0.0, 0.0, 360.0)
    if pole or s >= 0.5:
        return everything
    half = s / np.sqrt(1.0 - s * s) / DEG * (1.0 + 1e-9) + _PAD_DEG  # >= asin(s)
    if 2.0 * (half + col_w) >= 360.0:
        return everything
    inv_w = 1.0 / col_w
    a = wrap360(ra - ra0)
    lo = a - half
    hi = a + half
    # [lo, hi] lies in (-180, 540): cut it at 0 or 360
    if lo < 0.0:
        x1, x2, y1, y2 = 0.0, hi, lo + 360.0, 360.0
    elif hi >= 360.0:
        x1, x2, y1, y2 = 0.0, hi - 360.0, lo, 360.0
    else:
        x1, x2, y1, y2 = lo, hi, 0.0, -1.0
    c1, c2 = _col(x1, ra_lo, inv_w, nc), _col(x2, ra_lo, inv_w, nc)
    c3, c4 = 0, -1
    if y1 <= y2:
        c3, c4 = _col(y1, ra_lo, inv_w, nc), _col(y2, ra_lo, inv_w, nc)
        if c3 <= c2:  # both pieces reach one column: scan them as one
            return everything
    return c1, c2, x1, x2, c3, c4, y1, y2, half


@nb.njit(**JIT, inline="always")
def _sin(x):
    # sin, by its series where that is exact to double precision
    if abs(x) < 1e-3:
        x2 = x * x
        return x * (1.0 - x2 * (1.0 / 6.0) * (1.0 - x2 * (1.0 / 20.0)))
    return np.sin(x)


@nb.njit(**JIT, inline="always")
def _cos_near(cosd, sind, x, dec2):
    # cos(dec2) where dec2 = dec + x (x in radians, dec2 in degrees)
    if abs(x) < 1e-3:
        x2 = x * x
        return cosd * (1.0 - x2 * 0.5 * (1.0 - x2 * (1.0 / 12.0))) - sind * _sin(x)
    return np.cos(DEG * dec2)


@nb.njit(**JIT, inline="always")
def _radius(r):
    # per-call constants of a search radius r (deg): padded r, sin of it,
    # haversine of r
    rpad = r * (1.0 + 1e-9) + _PAD_DEG
    hr = _sin(0.5 * DEG * r)
    return rpad, np.sin(DEG * rpad), hr * hr


@nb.njit(**JIT)
def _scan(
    qra,
    qdec,
    rpad,
    sin_rpad,
    hav_r,
    geo,
    ra,
    dec,
    rows,
    ids,
    offsets,
    nearest,
    out_row,
    out_hav,
    start,
    cap,
):
    # Visit every object within the radius (constants from _radius) of (qra, qdec).
    # Pairs: write the first `cap` (row, haversine) from `start` and return
    # how many there are. Nearest: return the row with the smallest
    # haversine, then smallest id (-1 if none), its haversine in out_hav[start].
    ra0, ra_lo, col_w, zone0, inv_h = geo[0], geo[1], geo[3], geo[4], 1.0 / geo[5]
    inv_w = 1.0 / col_w
    nz = np.int64(geo[6])
    nc = np.int64(geo[7])
    z1 = _zone(qdec - rpad, zone0, inv_h, nz)
    z2 = _zone(qdec + rpad, zone0, inv_h, nz)
    cosd = np.cos(DEG * qdec)
    sind = np.sin(DEG * qdec)
    pole = qdec + rpad >= 90.0 or qdec - rpad <= -90.0
    c1, c2, x1, x2, c3, c4, y1, y2, half = _ra_pieces(
        qra, cosd, sin_rpad, ra0, ra_lo, col_w, nc, pole
    )
    found = 0
    best = -1
    best_hav = np.inf
    for z in range(z1, z2 + 1):
        # entries whose dec code is outside [dlo, dhi] are out of reach
        dlo = _zcode(qdec - rpad, zone0, inv_h, z) - 1
        dhi = _zcode(qdec + rpad, zone0, inv_h, z) + 1
        for piece in range(2):
            ca, cb, xa, xb = (c1, c2, x1, x2) if piece == 0 else (c3, c4, y1, y2)
            for c in range(ca, cb + 1):
                rlo, rhi = -1, 256
                if half < 360.0:
                    rlo = _ccode(xa, ra_lo, inv_w, c) - 1
                    rhi = _ccode(xb, ra_lo, inv_w, c) + 1
                seg = rows[offsets[z * nc + c] : offsets[z * nc + c + 1]]
                for p in range(seg.size):
                    e = seg[p]
                    dc = (e >> 39) & 255
                    rc = (e >> 31) & 255
                    if dc < dlo or dc > dhi or rc < rlo or rc > rhi:
                        continue
                    row = e & ROW_MASK
                    od = dec[row]
                    ddec = od - qdec
                    if abs(ddec) > rpad:
                        continue
                    dra = wrap180(ra[row] - qra)
                    if abs(dra) > half:
                        continue
                    sd = _sin(0.5 * DEG * ddec)
                    sa = _sin(0.5 * DEG * dra)
                    h = sd * sd + cosd * _cos_near(cosd, sind, DEG * ddec, od) * sa * sa
                    if h > hav_r:
                        continue
                    if nearest:
                        if h < best_hav or (h == best_hav and ids[row] < ids[best]):
                            best = row
                            best_hav = h
                    elif found < cap:
                        out_row[start + found] = row
                        out_hav[start + found] = h
                    found += 1
    if nearest:
        out_hav[start] = best_hav
        return best
    return found


@nb.njit(**JIT, inline="always")
def _hav_to_arcsec(h):
    return 2.0 * np.arcsin(np.sqrt(min(max(h, 0.0), 1.0))) / DEG * 3600.0


_PAIRS_PER_QUERY = 4  # pairs each query may keep from the first pass


@nb.njit(**JIT, parallel=True)
def query_pairs(qra, qdec, r, geo, ra, dec, rows, ids, offsets):
    """All (query, row, distance arcsec) within ``r`` deg, sorted by (query, row)."""
    m = qra.size
    rpad, sin_rpad, hav_r = _radius(r)
    cap = _PAIRS_PER_QUERY
    buf_row = np.empty(m * cap, np.int64)
    buf_hav = np.empty(m * cap, np.float64)
    counts = np.empty(m + 1, np.int64)
    counts[0] = 0
    for q in nb.prange(m):
        counts[q + 1] = _scan(
            qra[q],
            qdec[q],
            rpad,
            sin_rpad,
            hav_r,
            geo,
            ra,
            dec,
            rows,
            ids,
            offsets,
            False,
            buf_row,
            buf_hav,
            q * cap,
            cap,
        )
    for q in range(m):
        counts[q + 1] += counts[q]
    total = counts[m]
    qidx = np.empty(total, np.int64)
    orow = np.empty(total, np.int64)
    dist = np.empty(total, np.float64)
    for q in nb.prange(m):
        s = counts[q]
        e = counts[q + 1]
        if e - s > cap:  # more than the first pass kept: scan again
            _scan(
                qra[q],
                qdec[q],
                rpad,
                sin_rpad,
                hav_r,
                geo,
                ra,
                dec,
                rows,
                ids,
                offsets,
                False,
                orow,
                dist,
                s,
                e - s,
            )
        else:
            for i in range(e - s):
                orow[s + i] = buf_row[q * cap + i]
                dist[s + i] = buf_hav[q * cap + i]
        for i in range(s + 1, e):  # insertion sort of this query's few rows
            rv = orow[i]
            hv = dist[i]
            j = i - 1
            while j >= s and orow[j] > rv:
                orow[j + 1] = orow[j]
                dist[j + 1] = dist[j]
                j -= 1
            orow[j + 1] = rv
            dist[j + 1] = hv
        for i in range(s, e):
            qidx[i] = q
            dist[i] = _hav_to_arcsec(dist[i])
    return qidx, orow, dist


@nb.njit(**JIT, parallel=True)
def query_nearest(qra, qdec, r, geo, ra, dec, rows, ids, offsets):
    """Nearest row within ``r`` deg per query (-1 if none; ties to the smaller id)."""
    m = qra.size
    rpad, sin_rpad, hav_r = _radius(r)
    orow = np.empty(m, np.int64)
    dist = np.empty(m, np.float64)
    none = np.empty(0, np.int64)
    for q in nb.prange(m):
        best = _scan(
            qra[q],
            qdec[q],
            rpad,
            sin_rpad,
            hav_r,
            geo,
            ra,
            dec,
            rows,
            ids,
            offsets,
            True,
            none,
            dist,
            q,
            0,
        )
        orow[q] = best
        dist[q] = _hav_to_arcsec(dist[q]) if best >= 0 else np.nan
    return orow, dist
