"""Selecting a training set from the pool: balanced hierarchical sampling and retrieval.

Balanced hierarchical sampling (Vo et al. 2024, arXiv:2405.15613, section 4): from the top level
of a :class:`curation.kmeans.Hierarchy` down, each cluster's quota is split among its child
clusters with one cap ``x`` found by binary search, the largest with ``sum(min(x, size_i)) <=
quota`` (``size_i`` = points under child ``i``); the ``quota - sum`` slots left over go one each to
children larger than the cap, chosen by a permutation seeded by ``seed`` (the paper draws them at
random; a seed makes it repeatable). At the bottom level a cluster's quota is filled with random
members (``"random"``) or the members nearest its centroid (``"closest"``). Every level is
vectorised over all its clusters (one binary search for all of them at once), so the cost is
O(N log N) for any number of clusters.

Retrieval-based curation (DINOv2, Oquab et al. 2023, section 3): the ``k`` nearest pool images of
each seed image by cosine similarity, or every pool image at or above a similarity, deduplicated.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from curation.kmeans import Hierarchy, resolve_gpu

Strategy = Literal["random", "closest"]


def capped_split(
    quota: np.ndarray, sizes: np.ndarray, group: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Split each group's ``quota`` [G] among its members' ``sizes`` [M] (``group`` [M] in 0..G-1).

    Per group: the cap ``x`` is the largest integer with ``sum(min(x, size)) <= quota`` (binary
    search, all groups at once); members get ``min(x, size)``, and the remainder goes one slot each
    to members with ``size > x``, chosen in a random order from ``rng``. Returns the members' shares
    [M] int64: they sum to each group's quota and never exceed a member's size. Requires
    ``quota <= sum of the group's sizes``.
    """
    quota, sizes, group = (np.asarray(a, np.int64) for a in (quota, sizes, group))
    n_groups = len(quota)
    totals = np.bincount(group, weights=sizes, minlength=n_groups).astype(np.int64)
    if np.any(quota > totals) or np.any(quota < 0):
        raise ValueError("a cluster's quota exceeds the points under it")
    largest = np.zeros(n_groups, np.int64)
    np.maximum.at(largest, group, sizes)
    lo, hi = np.zeros(n_groups, np.int64), largest + 1  # f(lo) <= quota, f(hi) > quota (or hi = max + 1)
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        taken = np.bincount(group, weights=np.minimum(mid[group], sizes), minlength=n_groups)
        fits = taken <= quota
        lo, hi = np.where(fits, mid, lo), np.where(fits, hi, mid)
    share = np.minimum(lo[group], sizes)
    left = quota - np.bincount(group, weights=share, minlength=n_groups).astype(np.int64)
    room = sizes > lo[group]
    order = np.lexsort((rng.random(len(sizes)), ~room, group))  # per group: members with room first, shuffled
    rank = _rank_in_group(group[order])
    bonus = np.zeros(len(sizes), np.int64)
    bonus[order] = (rank < left[group[order]]) & room[order]
    return share + bonus


def _rank_in_group(sorted_group: np.ndarray) -> np.ndarray:
    """0, 1, 2... within each run of equal values of a sorted array."""
    starts = np.searchsorted(sorted_group, sorted_group, side="left")
    return np.arange(len(sorted_group)) - starts


def cluster_quotas(h: Hierarchy, target: int, seed: int) -> list[np.ndarray]:
    """The number of points balanced sampling takes from every cluster of every level, top level
    first as in the paper; returned indexed by level ([K_l] int64 per level, level 0 = finest)."""
    rng = np.random.default_rng(seed)
    top = h.n_levels - 1
    quotas: list[np.ndarray] = [np.zeros(0, np.int64)] * h.n_levels
    top_sizes = h.sizes(top)
    quotas[top] = capped_split(np.array([target]), top_sizes, np.zeros(len(top_sizes), np.int64), rng)
    for level in range(top - 1, -1, -1):
        quotas[level] = capped_split(quotas[level + 1], h.sizes(level), h.parents[level], rng)
    return quotas


def balanced_sample(
    h: Hierarchy,
    target: int,
    strategy: Strategy = "random",
    seed: int = 0,
    x: np.ndarray | None = None,
) -> np.ndarray:
    """Indices [target] (ascending, distinct) of the points balanced hierarchical sampling keeps.

    ``strategy``: ``"random"`` members of each bottom cluster (seeded), or ``"closest"``: the members
    nearest their level-0 centroid (ties by index), by the distances stored in ``h`` or, when ``x``
    [N, D] is given, measured from ``x``. Deterministic for a given ``seed``. A ``target`` above the
    pool size is a one-line error.
    """
    n = h.n_points
    if not 1 <= target <= n:
        raise ValueError(f"sample target size {target} must be between 1 and the pool size ({n} images)")
    if strategy not in ("random", "closest"):
        raise ValueError(f"unknown sampling strategy {strategy!r}; valid: closest, random")
    quota = cluster_quotas(h, target, seed)[0]
    assign = h.assign[0]
    if strategy == "closest":
        dist = h.distances
        if x is not None:
            diff = np.asarray(x, np.float32) - h.centroids[0][assign]
            dist = np.einsum("nd,nd->n", diff, diff)
        key = dist
    else:
        key = np.random.default_rng([seed, 1]).random(n)
    order = np.lexsort((np.arange(n), key, assign))
    rank = _rank_in_group(assign[order])
    return np.sort(order[rank < quota[assign[order]]])


def _normalised(v: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array [N, D]; got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def retrieval_sample(
    pool: np.ndarray,
    seeds: np.ndarray,
    k: int = 4,
    min_similarity: float | None = None,
    gpu: bool | str | None = None,
    batch: int = 4096,
) -> np.ndarray:
    """Indices (ascending, distinct) of pool images retrieved by the seed images, by cosine similarity.

    ``pool`` [N, D], ``seeds`` [S, D] (normalised here). With ``min_similarity`` None: the ``k``
    nearest pool images of each seed (exact search, faiss ``IndexFlatIP``); else every pool image
    whose cosine to some seed is ``>= min_similarity`` (faiss range search; ``k`` unused). A pool
    image found by several seeds is kept once.
    """
    import faiss

    pool, seeds = _normalised(pool), _normalised(seeds)
    if pool.shape[1] != seeds.shape[1]:
        raise ValueError(
            f"pool vectors are {pool.shape[1]}-d but seed vectors {seeds.shape[1]}-d (different models?)"
        )
    if len(pool) == 0 or len(seeds) == 0:
        raise ValueError(f"retrieval needs pool and seed vectors; got {len(pool)} pool, {len(seeds)} seeds")
    if min_similarity is None and k < 1:
        raise ValueError(f"retrieval k must be >= 1; got {k}")
    index: Any = faiss.IndexFlatIP(pool.shape[1])
    if min_similarity is None and resolve_gpu(gpu):
        index = faiss.index_cpu_to_all_gpus(index)  # range search stays on the CPU index
    index.add(pool)
    found: list[np.ndarray] = []
    for start in range(0, len(seeds), batch):
        q = seeds[start : start + batch]
        if min_similarity is None:
            _, idx = index.search(q, min(k, len(pool)))
            found.append(idx.ravel())
        else:
            # range search keeps sims strictly above the radius: step one float below, filter >=
            _, sims, idx = index.range_search(q, float(np.nextafter(np.float32(min_similarity), -np.inf)))
            found.append(idx[sims >= min_similarity])
    hits = np.concatenate(found).astype(np.int64)
    return np.unique(hits[hits >= 0])


def retrieval_from_config(
    pool: np.ndarray, seeds: np.ndarray, cfg: Any, gpu: bool | str | None = None
) -> np.ndarray:
    """:func:`retrieval_sample` with ``cfg.retrieval_k`` / ``cfg.retrieval_min_similarity`` of a
    ``curation.config.SampleConfig``."""
    return retrieval_sample(pool, seeds, cfg.retrieval_k, cfg.retrieval_min_similarity, gpu)
