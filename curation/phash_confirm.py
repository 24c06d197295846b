"""Confirming pHash links that are not byte-exact, before hash dedup groups them.

pHash at radius 6 is safe on photos of 64 px and up (``docs/dedup-threshold.md``: 0 false pairs in
2.1M), but not on small ones: on CIFAR-10 train (32 x 32) it linked 504 images, 16 pairs across
classes, about one pair in five visibly different photos. A 64-bit DCT hash of a 32 px image
upscaled to the 128 px thumbnail has little to hash. So a link between two different files stands
only when a second opinion agrees:

- the copy descriptor: cosine of the two images' copy vectors >= a threshold
  (:func:`embedding_confirm`, what the flow uses once the embed stage has run);
- without vectors (an image not embedded yet): the pHash distance must be within the radius that
  is safe at the smaller image's size (:func:`size_radius`, measured in ``docs/semantic-dedup.md``).

:func:`candidate_row_pairs` lists the row pairs to confirm: one row per distinct (pHash, image_id)
stands for its byte-identical copies (those are linked by their image_id anyway), and every pair of
such rows with the same pHash value or values within the radius is a candidate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# A confirm function: (candidate rows of the images table, rows a [P], rows b [P]) -> keep [P] bool
PairConfirm = Callable[[pa.Table, np.ndarray, np.ndarray], np.ndarray]
MAX_CANDIDATE_PAIRS = 20_000_000


def candidate_row_pairs(
    id_codes: np.ndarray,
    hash_codes: np.ndarray,
    value_pairs: np.ndarray,
    max_pairs: int = MAX_CANDIDATE_PAIRS,
) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a [P], b [P], int64, a != b) linked by pHash between different files.

    id_codes (n,) int64 equal per image_id (-1 unknown: every such row is its own file); hash_codes
    (n,) int64 index of the row's pHash value (-1 none); value_pairs [V, 2] pairs of value indexes
    within the radius. Pairs of one value, and of two linked values, are expanded over their
    representative rows (one per distinct file). More than ``max_pairs`` is a ValueError (a huge
    group of distinct images under one hash: lower the radius)."""
    rows = np.flatnonzero(hash_codes >= 0)
    if rows.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    file_key = np.where(id_codes[rows] >= 0, id_codes[rows], -1 - rows)
    keys = np.stack([hash_codes[rows], file_key], axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    reps = rows[np.sort(first)]
    reps = reps[np.lexsort((id_codes[reps], hash_codes[reps]))]
    rep_hash = hash_codes[reps]
    n_values = int(hash_codes.max()) + 1
    starts = np.searchsorted(rep_hash, np.arange(n_values), side="left")
    ends = np.searchsorted(rep_hash, np.arange(n_values), side="right")
    counts = ends - starts
    pair_vp = np.asarray(value_pairs, dtype=np.int64).reshape(-1, 2)
    total = int((counts * (counts - 1) // 2).sum() + (counts[pair_vp[:, 0]] * counts[pair_vp[:, 1]]).sum())
    if total > max_pairs:
        raise ValueError(
            f"pHash confirmation: {total:,} candidate pairs of different files (more than {max_pairs:,}); "
            "lower dedup.phash_radius"
        )
    a_parts, b_parts = [], []
    for value in np.flatnonzero(counts > 1):
        iu, ju = np.triu_indices(int(counts[value]), k=1)
        a_parts.append(reps[starts[value] + iu])
        b_parts.append(reps[starts[value] + ju])
    for u, v in pair_vp:
        ra, rb = reps[starts[u] : ends[u]], reps[starts[v] : ends[v]]
        a_parts.append(np.repeat(ra, len(rb)))
        b_parts.append(np.tile(rb, len(ra)))
    if not a_parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(a_parts).astype(np.int64), np.concatenate(b_parts).astype(np.int64)


def hamming_u64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance (P,) int64 of two uint64 arrays."""
    x = np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64))
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1).astype(np.int64)


def size_radius(short_side: np.ndarray, radius: int, small_side: int, small_radius: int) -> np.ndarray:
    """The pHash radius (P,) a pair may be linked at without vectors: ``radius`` when the smaller
    image's short side is at least ``small_side`` px, else ``small_radius`` (-1: never)."""
    return np.where(np.asarray(short_side) >= small_side, radius, small_radius).astype(np.int64)


def _phash_u64(col: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> np.ndarray:
    hexes = pc.fill_null(col.take(pa.array(rows)), "0" * 16).to_pylist()
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def _short_sides(cand: pa.Table, rows: np.ndarray) -> np.ndarray:
    w = pc.fill_null(cand.column("width").take(pa.array(rows)), 0).to_numpy(zero_copy_only=False)
    h = pc.fill_null(cand.column("height").take(pa.array(rows)), 0).to_numpy(zero_copy_only=False)
    return np.minimum(w, h).astype(np.int64)


def size_confirm(radius: int, small_side: int, small_radius: int) -> PairConfirm:
    """A :data:`PairConfirm` by image size alone: a pair stands when its pHash distance is within
    :func:`size_radius` of its smaller image's short side."""

    def confirm(cand: pa.Table, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if len(a) == 0:
            return np.zeros(0, dtype=bool)
        dist = hamming_u64(_phash_u64(cand.column("phash"), a), _phash_u64(cand.column("phash"), b))
        short = np.minimum(_short_sides(cand, a), _short_sides(cand, b))
        return dist <= size_radius(short, radius, small_side, small_radius)

    return confirm


def cosine_pairs(vectors: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Cosine (P,) float32 of rows a[p] and b[p] of L2-normalised ``vectors`` [N, D], in chunks."""
    out = np.empty(len(a), dtype=np.float32)
    for s in range(0, len(a), chunk):
        va = vectors[a[s : s + chunk]].astype(np.float32)
        vb = vectors[b[s : s + chunk]].astype(np.float32)
        out[s : s + chunk] = np.einsum("pd,pd->p", va, vb)
    return out


def embedding_confirm(
    vectors_of: Callable[[list[str]], tuple[dict[str, int], np.ndarray]],
    min_cosine: float,
    fallback: PairConfirm | None,
    small_side: int | None = None,
) -> PairConfirm:
    """A :data:`PairConfirm` by copy-descriptor vectors: a pair stands when the cosine of its two
    images' vectors is >= ``min_cosine``. ``vectors_of(image_ids)`` returns ({image_id: row}, vectors
    [M, D]) for the ids that have a vector; a pair missing one is decided by ``fallback`` (None:
    the link stands unconfirmed, as hash dedup without confirmation). ``small_side``: pairs whose
    smaller image has a short side of at least this many pixels stand without asking (pHash is
    measured safe there); None: every pair asks."""

    def confirm(cand: pa.Table, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        keep = np.ones(len(a), dtype=bool)
        ask = np.ones(len(a), dtype=bool)
        if small_side is not None and len(a):
            ask = np.minimum(_short_sides(cand, a), _short_sides(cand, b)) < small_side
        if not ask.any():
            return keep
        qa, qb = a[ask], b[ask]
        ids = cand.column("image_id")
        ia, ib = ids.take(pa.array(qa)).to_pylist(), ids.take(pa.array(qb)).to_pylist()
        where, vectors = vectors_of(sorted({i for i in ia + ib if i is not None}))
        ra = np.array([where.get(i, -1) if i is not None else -1 for i in ia], dtype=np.int64)
        rb = np.array([where.get(i, -1) if i is not None else -1 for i in ib], dtype=np.int64)
        have = (ra >= 0) & (rb >= 0)
        sub = np.ones(len(qa), dtype=bool)
        if have.any():
            sub[have] = cosine_pairs(vectors, ra[have], rb[have]) >= min_cosine
        if (~have).any() and fallback is not None:
            sub[~have] = fallback(cand, qa[~have], qb[~have])
        keep[ask] = sub
        return keep

    return confirm
