"""Balanced hierarchical sampling (Vo et al. 2024) and retrieval-based curation."""

from __future__ import annotations

import numpy as np
import pytest

from curation.config import ClusterConfig
from curation.kmeans import Hierarchy, hierarchical_kmeans
from curation.sampling import balanced_sample, capped_split, cluster_quotas, retrieval_sample


def split(sizes: list[int], quota: int, seed: int = 0) -> list[int]:
    g = np.zeros(len(sizes), np.int64)
    return capped_split(np.array([quota]), np.array(sizes), g, np.random.default_rng(seed)).tolist()


def test_capped_split_small_cases() -> None:
    assert split([1, 5, 10, 50], 30) == [1, 5, 10, 14]  # cap 14: 1 + 5 + 10 + 14 = 30 exactly
    assert split([1, 5, 10, 50], 66) == [1, 5, 10, 50]  # the whole group
    assert split([3, 3], 0) == [0, 0]
    shares = split([10, 10, 10], 20)  # cap 6 (18), two slots left over go to two of the three
    assert sorted(shares) == [6, 7, 7]
    assert {tuple(split([10, 10, 10], 20, seed)) for seed in range(20)} == {(6, 7, 7), (7, 6, 7), (7, 7, 6)}
    assert split([10, 10, 10], 20, 5) == split([10, 10, 10], 20, 5)
    with pytest.raises(ValueError, match="exceeds"):
        split([2, 2], 5)


def test_capped_split_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 7, 200)
    sizes = rng.integers(0, 40, 200)
    totals = np.bincount(groups, weights=sizes, minlength=7).astype(int)
    quota = (totals * rng.random(7)).astype(int)
    shares = capped_split(quota, sizes, groups, np.random.default_rng(1))
    for g in range(7):
        s, got = sizes[groups == g], shares[groups == g]
        cap = max(x for x in range(s.max() + 2) if np.minimum(x, s).sum() <= quota[g])
        assert got.sum() == quota[g]
        assert (got <= s).all()
        assert ((got == np.minimum(cap, s)) | ((got == cap + 1) & (s > cap))).all()


def toy_hierarchy() -> Hierarchy:
    """Two top clusters over four bottom clusters of sizes 2, 30, 6, 100 (138 points, 1-d)."""
    sizes = [2, 30, 6, 100]
    assign0 = np.repeat(np.arange(4), sizes)
    parents0 = np.array([0, 0, 1, 1])
    rng = np.random.default_rng(0)
    distances = rng.random(len(assign0)).astype(np.float32)
    return Hierarchy(
        centroids=[np.zeros((4, 1), np.float32), np.zeros((2, 1), np.float32)],
        assign=[assign0, parents0[assign0]],
        parents=[parents0],
        distances=distances,
    )


def test_quotas_top_down_caps() -> None:
    h = toy_hierarchy()
    q = cluster_quotas(h, 40, seed=0)
    assert q[1].tolist() == [20, 20]  # top sizes 32 and 106: cap 20 each
    assert q[0].tolist() == [2, 18, 6, 14]  # small clusters give everything, the rest fills the quota
    q = cluster_quotas(h, 100, seed=0)
    assert q[1].tolist() == [32, 68]  # 32 is under the cap: all of it
    assert q[0].tolist() == [2, 30, 6, 62]


def test_balanced_sample_exact_target_and_determinism() -> None:
    h = toy_hierarchy()
    for target in (1, 7, 40, 137, 138):
        picked = balanced_sample(h, target, "random", seed=0)
        assert len(picked) == target and len(np.unique(picked)) == target
        assert picked.min() >= 0 and picked.max() < 138
        quota = cluster_quotas(h, target, seed=0)[0]
        assert (np.bincount(h.assign[0][picked], minlength=4) == quota).all()
    a = balanced_sample(h, 40, "random", seed=3)
    assert (a == balanced_sample(h, 40, "random", seed=3)).all()
    assert any((a != balanced_sample(h, 40, "random", seed=s)).any() for s in range(4, 8))


def test_closest_takes_the_nearest_members_random_does_not() -> None:
    h = toy_hierarchy()
    closest = balanced_sample(h, 40, "closest", seed=0)
    random = balanced_sample(h, 40, "random", seed=0)
    for c in range(4):
        members = np.flatnonzero(h.assign[0] == c)
        chosen = np.intersect1d(members, closest)
        rest = np.setdiff1d(members, closest)
        if len(rest) and len(chosen):
            assert h.distances[chosen].max() <= h.distances[rest].min()
    assert h.distances[closest].mean() < h.distances[random].mean()
    # closest ignores the seed except for the leftover slots; here the quotas have none
    assert (closest == balanced_sample(h, 40, "closest", seed=9)).all()
    # distances measured from vectors when given
    x = h.distances[:, None].astype(np.float32) ** 0.5  # centroids are 0: distance^2 = x^2
    assert (balanced_sample(h, 40, "closest", seed=0, x=x) == closest).all()


def test_bad_targets_are_one_line_errors() -> None:
    h = toy_hierarchy()
    with pytest.raises(ValueError, match=r"target size 139 .* pool size \(138 images\)"):
        balanced_sample(h, 139)
    with pytest.raises(ValueError, match="strategy"):
        balanced_sample(h, 10, "nearest")  # type: ignore[arg-type]


def test_balancing_flattens_a_skewed_pool() -> None:
    rng = np.random.default_rng(0)
    w = 1.0 / (np.arange(30) + 1) ** 1.5
    labels = rng.choice(30, 6000, p=w / w.sum())
    x = (rng.normal(size=(30, 16))[labels] * 2 + 0.5 * rng.normal(size=(6000, 16))).astype(np.float32)
    cfg = ClusterConfig(n_clusters=[120, 30], resampling_steps=[1, 4], sample_sizes=[4, 2], n_iter=10)
    h = hierarchical_kmeans(x, cfg)
    picked = balanced_sample(h, 600, "random", seed=0)
    pool_share = np.bincount(labels).max() / len(labels)
    sample_share = np.bincount(labels[picked]).max() / 600
    assert sample_share < pool_share / 2
    assert len(np.unique(labels[picked])) == len(np.unique(labels))  # every mode kept


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_retrieval_returns_planted_neighbours() -> None:
    rng = np.random.default_rng(0)
    pool = unit(rng.normal(size=(2000, 64)))
    planted = np.array([5, 77, 300, 1999])
    seeds = unit(pool[planted] + 0.05 * rng.normal(size=(4, 64)))
    assert retrieval_sample(pool, seeds, k=1).tolist() == planted.tolist()
    # near copies of a planted image come back with it; another seed's neighbours are deduplicated
    copies = unit(pool[[5, 5, 5]] + 0.02 * rng.normal(size=(3, 64)))
    pool2 = np.concatenate([pool, copies])
    got = retrieval_sample(pool2, np.concatenate([seeds, seeds[:1]]), k=4)
    assert set(planted) <= set(got.tolist()) and {2000, 2001, 2002} <= set(got.tolist())
    assert len(got) == len(np.unique(got))
    # by similarity: the planted images and the copies, nothing unrelated (cosines ~0 in 64-d)
    got = retrieval_sample(pool2, seeds, min_similarity=0.8)
    assert got.tolist() == [5, 77, 300, 1999, 2000, 2001, 2002]
    sims = pool2 @ seeds.T
    assert got.tolist() == np.flatnonzero((sims >= 0.8).any(1)).tolist()


def test_retrieval_bad_input() -> None:
    with pytest.raises(ValueError, match="64-d but seed vectors 32-d"):
        retrieval_sample(np.ones((4, 64), np.float32), np.ones((1, 32), np.float32))
