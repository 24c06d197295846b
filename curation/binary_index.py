"""All pairs of 64-bit hashes within a Hamming radius, without an O(n^2) pair loop.

Multi-index hashing as a self-join (Manku, Jain, Das Sarma, "Detecting near-duplicates for web
crawling", WWW 2007; Norouzi, Punjani, Fleet, "Fast search in Hamming space with multi-index
hashing", CVPR 2012): split the 64 bits into ``m`` contiguous blocks. Two hashes at distance
``<= r`` differ in at most ``r`` blocks (pigeonhole), so they agree exactly on at least
``k = m - r`` blocks. For every ``k``-subset of blocks (one "table") we sort the hashes by those
blocks, take the pairs inside runs of equal keys as candidates and keep the ones whose popcount
distance is ``<= r``. Recall is exact by construction; the work is
``C(m, k) * (sort of n) + candidates``, and ``m`` is chosen by a cost model so that a key holds
about ``log2(n)`` bits (few candidates) without too many tables.

A pair that agrees on several ``k``-subsets is reported only by the table of the ``k`` LOWEST
agreeing blocks, so every pair comes out exactly once without a global ``unique`` over pairs.
Identical hashes are collapsed first (``np.unique``): a value held by many rows costs one item.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations

import numpy as np

BITS = 64
_U64 = np.uint64
# Relative costs of the model in _plan (seconds per item, measured on 2 EPYC cores, numpy 2.4):
# one table costs a packed uint64 sort of n items (~100 ns/item at 1M incl. key building) or, with
# sparse keys, a counting filter (~40 ns/item + 5 ns/bucket) + the sort of the rows that share a
# bucket; one candidate pair ~40 ns to generate and verify; brute force ~2 ns per pair.
_SORT_COST = 100e-9
_COUNT_COST = 40e-9
_BUCKET_COST = 5e-9
_CAND_COST = 40e-9
_BRUTE_COST = 2e-9
_MAX_TABLES = 5000


def hex_to_uint64(hexes: np.ndarray | list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """16-hex-digit strings (``str(imagehash.phash(img))``) -> (uint64 values (n,), valid mask (n,)).

    ``None`` gives ``valid=False`` (value 0); anything else that is not 16 hex digits raises
    ``ValueError`` naming the first offending index.
    """
    items = list(hexes)
    valid = np.array([h is not None for h in items], dtype=bool)
    texts = [h if h is not None else "0" * 16 for h in items]
    bad = [i for i, h in enumerate(texts) if len(h) != 16]
    if bad:
        raise ValueError(f"hash at index {bad[0]} is {texts[bad[0]]!r}: expected 16 hex digits (64 bits)")
    try:
        raw = bytes.fromhex("".join(texts))
    except ValueError as exc:
        raise ValueError(f"non-hex character in hashes: {exc}") from exc
    return np.frombuffer(raw, dtype=">u8").astype(_U64), valid


def uint64_to_hex(values: np.ndarray) -> list[str]:
    """Inverse of ``hex_to_uint64`` for valid values."""
    return [f"{int(v):016x}" for v in np.asarray(values, dtype=_U64)]


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance of uint64 arrays (broadcasting), as int64."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def block_bounds(m: int) -> list[tuple[int, int]]:
    """``m`` contiguous blocks covering 64 bits, sizes differing by at most one: (shift, width)."""
    widths = [BITS // m + (1 if i < BITS % m else 0) for i in range(m)]
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(s), w) for s, w in zip(shifts, widths, strict=True)]


def _plan(n: int, radius: int) -> int | None:
    """Cheapest block count ``m`` for ``n`` distinct hashes, or None when brute force is cheaper.

    Blocks are ``64 // m`` or one bit wider; a table whose key holds ``j`` wide blocks has
    ``k * (64 // m) + j`` key bits, and there are C(wide, j) * C(narrow, k - j) such tables."""
    best_m, best_cost = None, _BRUTE_COST * n * (n - 1) / 2
    idx_bits = max(1, int(n - 1).bit_length())
    for m in range(radius + 1, min(BITS, radius + 16) + 1):
        k = m - radius
        if math.comb(m, k) > _MAX_TABLES:
            continue
        wide, narrow, w = BITS % m, m - BITS % m, BITS // m
        cost = 0.0
        for j in range(max(0, k - narrow), min(k, wide) + 1):
            tables = math.comb(wide, j) * math.comb(narrow, k - j)
            key_bits = min(k * w + j, BITS - idx_bits)  # wider keys are folded (_table_pairs)
            candidates = n * (n - 1) / 2 / 2.0**key_bits
            cost += tables * (n * _table_cost(n, key_bits) + candidates * _CAND_COST)
        if cost < best_cost:
            best_m, best_cost = m, cost
    return best_m


def _table_cost(n: int, key_bits: int) -> float:
    """Seconds per row of one table: the full sort, or the counting filter + sorting the rows of
    shared buckets (a Poisson fraction 1 - exp(-n / 2^bits)) when keys are sparse."""
    bits = _filter_bits(n, key_bits)
    if n >= 1 << bits:
        return _SORT_COST
    return _COUNT_COST + _BUCKET_COST * 2.0**bits / n + (1 - math.exp(-n / 2.0**bits)) * _SORT_COST


def _filter_bits(n: int, key_bits: int) -> int:
    """Buckets of the singleton filter: about 2n (more would cost more to count than they save)."""
    return min(key_bits, max(8, int(n).bit_length() + 1))


def near_pairs_brute(hashes: np.ndarray, radius: int, chunk: int = 2048) -> np.ndarray:
    """Reference O(n^2) version of ``near_pairs`` (blocked, vectorised): pairs (i < j), (P, 2) int64."""
    h = np.ascontiguousarray(hashes, dtype=_U64)
    out = []
    for start in range(0, len(h), chunk):
        rows = h[start : start + chunk]
        dist = np.bitwise_count(rows[:, None] ^ h[None, :])
        i, j = np.nonzero(dist <= radius)
        i = i + start
        keep = i < j
        out.append(np.stack([i[keep], j[keep]], axis=1))
    return _sorted_pairs(np.concatenate(out) if out else np.empty((0, 2), np.int64))


def _sorted_pairs(pairs: np.ndarray) -> np.ndarray:
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order]


def _key(h: np.ndarray, blocks: list[tuple[int, int]]) -> tuple[np.ndarray, int]:
    """The chosen blocks of every hash packed side by side: (uint64 key (n,), key width in bits)."""
    key = np.zeros(len(h), dtype=_U64)
    width = 0
    for shift, w in blocks:
        part = (h >> _U64(shift)) & _U64((1 << w) - 1)
        key |= part << _U64(width)
        width += w
    return key, width


def _run_pairs(keys: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
    """Positions ``p`` with ``keys[p] == keys[p + d]`` in sorted ``keys``, for d = 1, 2, ...

    Runs of equal keys are contiguous, so (p, p + d) for all yielded (p, d) are exactly the pairs
    inside runs; the position set shrinks as d grows past the shorter runs."""
    pos = np.flatnonzero(keys[1:] == keys[:-1])
    d = 1
    while pos.size:
        yield pos, d
        pos = pos[pos + d + 1 < len(keys)]
        pos = pos[keys[pos + d + 1] == keys[pos]]
        d += 1


def _shared_key_rows(key: np.ndarray, width: int) -> np.ndarray:
    """Rows whose key another row may share: all rows, or, when keys are sparse (n < 2^bits), the
    rows of buckets holding >= 2 (a counting pass, cheaper than sorting the rows that cannot pair)."""
    bits = _filter_bits(len(key), width)
    if len(key) >= 1 << bits:
        return np.arange(len(key), dtype=np.int64)
    bucket = key if width <= bits else (key * _U64(0x9E3779B97F4A7C15)) >> _U64(BITS - bits)
    bucket = bucket.astype(np.intp)
    # counts capped at 2 in uint8: the gather below then reads a cache-friendly byte array
    counts = np.minimum(np.bincount(bucket, minlength=1 << bits), 2).astype(np.uint8)
    return np.flatnonzero(counts[bucket] > 1)


def _lowest_bits(x: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` lowest set bits of each uint64 (all of them when fewer are set)."""
    out = np.zeros_like(x)
    for _ in range(k):
        low = x & (~x + _U64(1))  # two's complement trick: x & -x isolates the lowest set bit
        out |= low
        x = x ^ low
    return out


def _table_pairs(h: np.ndarray, m: int, subset: tuple[int, ...], radius: int) -> np.ndarray:
    """Pairs (i < j) at distance <= radius whose lowest ``k`` agreeing blocks are ``subset``."""
    bounds = block_bounds(m)
    key, width = _key(h, [bounds[b] for b in subset])
    idx_bits = max(1, int(len(h) - 1).bit_length())
    if width + idx_bits > BITS:  # fold the key (Fibonacci hashing); collisions only add candidates
        key = (key * _U64(0x9E3779B97F4A7C15)) >> _U64(idx_bits)
        width = BITS - idx_bits
    rows = _shared_key_rows(key, width)
    packed = np.sort((key[rows] << _U64(idx_bits)) | rows.astype(_U64))
    keys, ids = packed >> _U64(idx_bits), (packed & _U64((1 << idx_bits) - 1)).astype(np.int64)
    hs = h[ids]  # hashes in key order: candidates below read neighbours, not random rows
    masks = np.array([((1 << w) - 1) << s for s, w in bounds], dtype=_U64)
    subset_mask = _U64(sum(1 << b for b in subset))
    found = []
    for pos, d in _run_pairs(keys):
        x = hs[pos] ^ hs[pos + d]
        ok = np.bitwise_count(x) <= radius
        pos, x = pos[ok], x[ok]
        agree = np.zeros(len(x), dtype=_U64)
        for j, mask in enumerate(masks):
            agree |= ((x & mask) == 0).astype(_U64) << _U64(j)
        pos = pos[_lowest_bits(agree, m - radius) == subset_mask]
        a, b = ids[pos], ids[pos + d]
        found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), np.int64)


def distinct_near_pairs(
    values: np.ndarray, radius: int, blocks: int | None = None, threads: int | None = None
) -> np.ndarray:
    """``near_pairs`` for DISTINCT uint64 values (caller guarantees uniqueness): (P, 2) int64, i < j.

    ``blocks`` forces the number of blocks ``m`` (> radius); None lets the cost model choose
    (possibly brute force for small n). ``threads``: tables searched in parallel (numpy sorts and
    ufuncs release the GIL); None = ``min(os.cpu_count(), 8)``.
    """
    h = np.ascontiguousarray(values, dtype=_U64)
    n = len(h)
    if not 0 <= radius <= BITS:
        raise ValueError(f"radius must be in 0..{BITS}, got {radius}")
    if n < 2 or radius == 0:
        return np.empty((0, 2), np.int64)
    m = _plan(n, radius) if blocks is None else blocks
    if m is None:
        return near_pairs_brute(h, radius)
    if not radius < m <= BITS:
        raise ValueError(f"blocks must be in {radius + 1}..{BITS} for radius {radius}, got {m}")
    subsets = list(combinations(range(m), m - radius))
    workers = threads or min(os.cpu_count() or 1, 8)
    if workers == 1:
        parts = [_table_pairs(h, m, s, radius) for s in subsets]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(lambda s: _table_pairs(h, m, s, radius), subsets))
    return _sorted_pairs(np.concatenate(parts))


def _expand(pairs: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Pairs of distinct values -> pairs of rows, plus all pairs of rows sharing one value."""
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = []
    # rows sharing one value: for every value with c rows, all c*(c-1)/2 pairs
    for c in np.unique(counts[counts > 1]):
        groups = starts[counts == c][:, None] + np.arange(c)[None, :]
        iu, ju = np.triu_indices(c, k=1)
        out.append(np.stack([order[groups[:, iu]].ravel(), order[groups[:, ju]].ravel()], axis=1))
    # pairs of values: every row of the first times every row of the second
    for ca in np.unique(counts[pairs[:, 0]]) if len(pairs) else []:
        sel = pairs[counts[pairs[:, 0]] == ca]
        for cb in np.unique(counts[sel[:, 1]]):
            sub = sel[counts[sel[:, 1]] == cb]
            ra = order[starts[sub[:, 0]][:, None] + np.arange(ca)]  # (p, ca)
            rb = order[starts[sub[:, 1]][:, None] + np.arange(cb)]  # (p, cb)
            a = np.repeat(ra, cb, axis=1).ravel()
            b = np.tile(rb, (1, ca)).ravel()
            out.append(np.stack([a, b], axis=1))
    if not out:
        return np.empty((0, 2), np.int64)
    both = np.concatenate(out).astype(np.int64)
    return _sorted_pairs(np.sort(both, axis=1))


def near_pairs(
    hashes: np.ndarray, radius: int, blocks: int | None = None, threads: int | None = None
) -> np.ndarray:
    """All pairs of rows whose 64-bit hashes are within Hamming distance ``radius`` (inclusive).

    hashes: (n,) uint64. Returns (P, 2) int64 row indices, ``i < j``, sorted; rows with identical
    hashes are pairs too (distance 0). Exact: equal to ``near_pairs_brute``. Note the output is
    quadratic in the size of a group of identical hashes; to group rows use
    ``distinct_near_pairs`` on ``np.unique(hashes)`` instead (what ``hashdedup`` does).
    """
    values, inverse = np.unique(np.asarray(hashes, dtype=_U64), return_inverse=True)
    pairs = distinct_near_pairs(values, radius, blocks, threads)
    return _expand(pairs, inverse.ravel())
