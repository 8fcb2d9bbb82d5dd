"""The sky partition: HEALPix NESTED chunks, their owners and margins.

A chunk is a pixel of order ``chunk_order``; every position also has a fine
pixel of order ``fine_order``. In the NESTED scheme chunk ``c`` is exactly the
fine range ``[c << s, (c + 1) << s)`` with ``s = 2 * (fine_order -
chunk_order)``, so a chunk loads with one range query on the fine index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from association.sky import healpix as hp

DEFAULT_CHUNK_ORDER = 6
"""HEALPix order of a chunk unless the pipeline says otherwise (49152 chunks of ~0.92 deg)."""

DEFAULT_FINE_ORDER = 20
"""HEALPix order of the fine index unless the pipeline says otherwise."""

MARGIN_LIMIT = 0.25
"""Largest margin `Partition.margin_chunks` supports, in chunk resolutions.

Two chunks that do not touch are at least ~0.68 chunk resolutions apart
(measured over all pixels at orders 1-6), so within this margin of a chunk
lie only the chunk and its (up to 8) neighbours.
"""


@dataclass(frozen=True)
class Partition:
    """The sky cut into HEALPix NESTED chunks of ``chunk_order``.

    Parameters
    ----------
    chunk_order : int
        HEALPix order of a chunk (6: 49152 chunks of ~0.92 deg).
    fine_order : int
        HEALPix order of the fine index stored with every row.
    """

    chunk_order: int = DEFAULT_CHUNK_ORDER
    fine_order: int = DEFAULT_FINE_ORDER

    def __post_init__(self) -> None:
        if not 0 <= self.chunk_order <= self.fine_order <= 29:
            raise ValueError(
                f"need 0 <= chunk_order <= fine_order <= 29, got "
                f"{self.chunk_order}, {self.fine_order}"
            )

    @property
    def n_chunks(self) -> int:
        """Number of chunks on the sky."""
        return 12 << (2 * self.chunk_order)

    @property
    def _shift(self) -> int:
        return 2 * (self.fine_order - self.chunk_order)

    @property
    def chunk_resolution_deg(self) -> float:
        """Approximate chunk size (square root of its area) in degrees."""
        return float(np.degrees(hp.nside2resol(1 << self.chunk_order)))

    def fine_index(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Fine NESTED pixel of each position (deg)."""
        nside = 1 << self.fine_order
        return np.asarray(hp.ang2pix(nside, ra, dec, nest=True, lonlat=True), dtype=np.int64)

    def chunk_of_fine(self, fine: np.ndarray) -> np.ndarray:
        """Chunk holding each fine pixel."""
        return np.right_shift(np.asarray(fine, dtype=np.int64), self._shift)

    def chunk_of(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Chunk of each position (deg)."""
        return self.chunk_of_fine(self.fine_index(ra, dec))

    def chunk_range(self, chunk: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """Half-open fine-index range ``[lo, hi)`` of each chunk."""
        c = np.asarray(chunk, dtype=np.int64)
        return np.left_shift(c, self._shift), np.left_shift(c + 1, self._shift)

    def fov_chunks(self, ra: float, dec: float, radius_deg: float) -> np.ndarray:
        """Sorted chunks that overlap the disc (may include a few more)."""
        vec = hp.ang2vec(ra, dec, lonlat=True)
        pix = hp.query_disc(
            1 << self.chunk_order, vec, np.radians(radius_deg), inclusive=True, nest=True
        )
        return np.unique(np.asarray(pix, dtype=np.int64))

    def owner(self, chunks: np.ndarray, n_slices: int) -> np.ndarray:
        """Slice owning each chunk: ``(x + k * y + face) % n_slices``, ``k = isqrt(n_slices)``.

        ``face`` is the chunk's HEALPix base pixel and ``x``, ``y`` its
        coordinates in that face (the de-interleaved bits of the NESTED id).
        Like a Latin square, the pattern gives every Slice its share of any
        compact patch of chunks: over random 1.75 deg fields (~22 chunks)
        Slices differ by at most 3-4 chunks, against 6-8 for ``chunk %
        n_slices``, whose stripes follow the NESTED bit order.
        """
        if n_slices < 1:
            raise ValueError(f"n_slices must be >= 1, got {n_slices}")
        c = np.asarray(chunks, dtype=np.int64)
        x = np.zeros_like(c)
        y = np.zeros_like(c)
        for b in range(self.chunk_order):
            x |= ((c >> (2 * b)) & 1) << b
            y |= ((c >> (2 * b + 1)) & 1) << b
        face = c >> (2 * self.chunk_order)
        return (x + math.isqrt(n_slices) * y + face) % n_slices

    def margin_chunks(self, owned: np.ndarray, margin_deg: float) -> np.ndarray:
        """Sorted chunks not in ``owned`` within ``margin_deg`` of an owned chunk.

        These are the owned chunks' neighbours, which is exact for margins up
        to `MARGIN_LIMIT` chunk resolutions; a larger margin raises ValueError.
        """
        limit = MARGIN_LIMIT * self.chunk_resolution_deg
        if not 0 <= margin_deg <= limit:
            raise ValueError(
                f"margin_deg must be in [0, {limit:.4g}] for chunk order "
                f"{self.chunk_order}, got {margin_deg}"
            )
        owned = np.unique(np.asarray(owned, dtype=np.int64))
        if owned.size == 0:
            return owned
        nb = hp.get_all_neighbours(1 << self.chunk_order, owned, nest=True).ravel()
        nb = np.unique(nb[nb >= 0])
        return nb[~np.isin(nb, owned, assume_unique=True)]

    def strip_ranges(
        self, chunks: np.ndarray, owned: np.ndarray, step: int = 5
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fine-index ranges of the thin strips of `chunks` along `owned` chunks.

        The strip is made of the sub-pixels of order ``chunk_order + step``
        that touch an owned chunk. Every point within a margin narrower than a
        sub-pixel (about 100 arcsec at orders 6 + 5) of an owned chunk lies in
        it. Returns half-open ``[lo, hi)`` arrays, merged where contiguous
        within a chunk: each range lies in one chunk.
        """
        chunks = np.asarray(chunks, dtype=np.int64)
        owned = np.unique(np.asarray(owned, dtype=np.int64))
        if chunks.size == 0 or owned.size == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        order = self.chunk_order + step
        sub = (chunks[:, None] << (2 * step)) + np.arange(1 << (2 * step), dtype=np.int64)
        sub = sub.ravel()
        nb = hp.get_all_neighbours(1 << order, sub, nest=True)
        touches = np.isin(np.where(nb >= 0, nb >> (2 * step), -1), owned).any(axis=0)
        sub = np.sort(sub[touches])
        shift = 2 * (self.fine_order - order)
        apart = (np.diff(sub) != 1) | (np.diff(sub >> (2 * step)) != 0)
        starts = np.flatnonzero(np.r_[True, apart])
        ends = np.r_[starts[1:], sub.size] - 1
        return sub[starts] << shift, (sub[ends] + 1) << shift

    def slice_chunks(
        self,
        ra: float,
        dec: float,
        radius_deg: float,
        slice_index: int,
        n_slices: int,
        margin_deg: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Chunks a Slice owns in a field of view, and the margin it reads.

        The margin is the owned chunks' margin chunks that also overlap the
        disc widened by ``margin_deg``: every position within ``margin_deg``
        of both the field and an owned chunk lies in an owned or margin chunk.
        """
        if not 0 <= slice_index < n_slices:
            raise ValueError(f"slice_index must be in [0, {n_slices}), got {slice_index}")
        chunks = self.fov_chunks(ra, dec, radius_deg)
        owned = chunks[self.owner(chunks, n_slices) == slice_index]
        margin = self.margin_chunks(owned, margin_deg)
        near = self.fov_chunks(ra, dec, radius_deg + margin_deg)
        return owned, margin[np.isin(margin, near)]
