"""faiss k-means against scikit-learn's KMeans, and the properties of hierarchical k-means."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans

from curation.config import ClusterConfig
from curation.kmeans import (
    check_levels,
    closest_per_cluster,
    greedy_kmeans_pp,
    hierarchical_kmeans,
    kmeans,
    resampled_kmeans,
    resolve_gpu,
)


def blobs(n: int = 4000, centers: int = 20, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim)) * 3
    return (c[rng.integers(0, centers, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def skewed(n: int = 6000, centers: int = 30, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A mixture whose component j has weight ~ 1 / (j + 1)^1.5: a few huge modes, a long tail."""
    rng = np.random.default_rng(seed)
    w = 1.0 / (np.arange(centers) + 1) ** 1.5
    labels = rng.choice(centers, n, p=w / w.sum())
    c = rng.normal(size=(centers, dim)) * 2
    return (c[labels] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32), labels


def test_same_start_same_lloyd_iterations_as_sklearn() -> None:
    x = blobs()
    start = x[np.random.default_rng(1).choice(len(x), 20, replace=False)]
    for n_iter in (1, 5, 30):
        ours = kmeans(x, 20, n_iter=n_iter, init_centroids=start)
        ref = KMeans(20, init=start, n_init=1, max_iter=n_iter, tol=0, algorithm="lloyd").fit(x)
        assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-4)
        np.testing.assert_allclose(ours.centroids, ref.cluster_centers_, atol=1e-4)
        assert (ours.assign == ref.labels_).all()


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_inertia_within_one_percent_of_sklearn(init: str) -> None:
    x = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
    for seed in range(3):
        ours = kmeans(x, 16, n_iter=50, seed=seed, init=init)  # type: ignore[arg-type]
        ref = KMeans(16, n_init=1, max_iter=50, random_state=seed, algorithm="lloyd").fit(x)
        assert ours.inertia <= 1.01 * ref.inertia_
        # the reported inertia is of every point against the returned centroids
        d = ((x - ours.centroids[ours.assign]) ** 2).sum(1)
        assert ours.inertia == pytest.approx(float(d.sum()), rel=1e-4)


def unit_mixture(n: int, dim: int, components: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``components`` centres with skewed weights, like embeddings."""
    rng = np.random.default_rng(seed)
    w = 1.0 / (np.arange(components) + 1) ** 1.2
    c = rng.normal(size=(components, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    v = c[rng.choice(components, n, p=w / w.sum())] + 0.06 * rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_many_clusters_few_iterations_within_one_percent_of_sklearn() -> None:
    # The regime of the benchmark (k large, 10 iterations), where the start decides the end:
    # faiss's plain k-means++ ends 4-6% above scikit-learn's greedy k-means++ here, ours within 1%.
    x = unit_mixture(12_000, 48, 300)
    for seed in range(2):
        ours = kmeans(x, 150, n_iter=10, seed=seed)
        ref = KMeans(150, n_init=1, max_iter=10, tol=0, random_state=seed, algorithm="lloyd").fit(x)
        ref_inertia = float(((x - ref.cluster_centers_[ref.labels_]) ** 2).sum())
        assert ours.inertia <= 1.01 * ref_inertia


def test_greedy_kmeans_pp_picks_data_points_one_per_separated_blob() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 8)) * 50
    x = (np.repeat(centres, [400] + [20] * 11, axis=0) + rng.normal(size=(620, 8))).astype(np.float32)
    blob = np.repeat(np.arange(12), [400] + [20] * 11)
    c = greedy_kmeans_pp(x, 12, seed=3)
    rows = [int(np.flatnonzero((x == ci).all(1))[0]) for ci in c]  # every centroid is a data point
    assert sorted(blob[rows]) == list(range(12))  # far blobs dominate the D^2 draw, the big one is hit once
    np.testing.assert_array_equal(c, greedy_kmeans_pp(x, 12, seed=3))  # seeded
    same = np.ones((10, 4), np.float32)  # all points equal: still k centroids, no division by zero
    assert greedy_kmeans_pp(same, 3).shape == (3, 4)


def test_max_points_per_centroid_none_trains_on_every_point() -> None:
    # 64 points per centroid here; a cap of 2 trains on 2 * k of them and lands elsewhere
    x = blobs(n=2048, centers=32)
    full = kmeans(x, 32, n_iter=20, seed=3)
    assert kmeans(x, 32, n_iter=20, seed=3).inertia == full.inertia  # deterministic
    capped = kmeans(x, 32, n_iter=20, seed=3, max_points_per_centroid=2)
    assert capped.inertia != full.inertia


def test_k_above_points_is_one_line_error() -> None:
    with pytest.raises(ValueError, match="10 points into 11 clusters"):
        kmeans(np.zeros((10, 4), np.float32), 11)
    with pytest.raises(ValueError, match="level 1 asks for 50 clusters but has only 40 level-0 centroids"):
        check_levels(1000, [40, 50])
    with pytest.raises(ValueError, match="level 0 asks for 2000 clusters but has only 1000 points"):
        hierarchical_kmeans(
            np.zeros((1000, 4), np.float32),
            ClusterConfig(n_clusters=[2000, 10], resampling_steps=[1], sample_sizes=[4]),
        )


def test_gpu_on_without_gpu_is_an_error() -> None:
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible")
    with pytest.raises(ValueError, match="no GPU"):
        resolve_gpu("on")
    assert resolve_gpu("auto") is False


def test_closest_per_cluster() -> None:
    assign = np.array([0, 0, 0, 1, 1, 2])
    dist = np.array([3.0, 1.0, 2.0, 5.0, 4.0, 9.0])
    assert closest_per_cluster(assign, dist, 2).tolist() == [1, 2, 3, 4, 5]
    assert closest_per_cluster(assign, dist, 1).tolist() == [1, 4, 5]


def test_resampling_spreads_centroids_over_the_support() -> None:
    # Vo et al.: plain k-means puts most centroids in the dense modes; resampling evens them out
    x, labels = skewed()
    plain = resampled_kmeans(x, 60, steps=0, sample_size=4, n_iter=20, seed=0)
    resampled = resampled_kmeans(x, 60, steps=8, sample_size=4, n_iter=20, seed=0)

    def modes_covered(r: object) -> int:
        # a mode is covered when some centroid's nearest points are mostly from it
        majority = [np.bincount(labels[r.assign == c]).argmax() for c in np.unique(r.assign)]  # type: ignore[attr-defined]
        return len(set(majority))

    def share_of_biggest_mode(r: object) -> float:
        biggest = np.bincount(labels).argmax()
        owners = [np.bincount(labels[r.assign == c], minlength=30).argmax() for c in np.unique(r.assign)]  # type: ignore[attr-defined]
        return float(np.mean(np.array(owners) == biggest))

    assert share_of_biggest_mode(resampled) < share_of_biggest_mode(plain)
    assert modes_covered(resampled) >= modes_covered(plain)


def test_hierarchy_properties() -> None:
    x, _ = skewed(n=5000)
    cfg = ClusterConfig(
        n_clusters=[100, 20, 5], resampling_steps=[1, 4, 4], sample_sizes=[4, 2, 2], n_iter=10
    )
    calls: list[tuple[int, int]] = []
    h = hierarchical_kmeans(x, cfg, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 1 + 4 + 4) for i in range(1, 10)]
    assert h.n_levels == 3 and h.n_points == 5000
    assert [c.shape for c in h.centroids] == [(100, 16), (20, 16), (5, 16)]
    assert [len(p) for p in h.parents] == [100, 20]
    for level, k in enumerate(cfg.n_clusters):
        a = h.assign[level]
        assert a.shape == (5000,) and a.min() >= 0 and a.max() < k
        assert h.sizes(level).sum() == 5000
    for level in range(2):  # a point's cluster at level l+1 is its level-l cluster's parent
        assert (h.parents[level][h.assign[level]] == h.assign[level + 1]).all()
    # the upper level clusters the lower level's centroids: each parent is the nearest of them
    d = ((h.centroids[0][:, None, :] - h.centroids[1][None]) ** 2).sum(-1)
    assert (d.argmin(1) == h.parents[0]).all()
    d0 = ((x - h.centroids[0][h.assign[0]]) ** 2).sum(1)
    np.testing.assert_allclose(h.distances, d0, rtol=1e-3, atol=1e-3)
    assert h.levels_matrix().shape == (5000, 3)
    again = hierarchical_kmeans(x, cfg)
    assert all((a == b).all() for a, b in zip(h.assign, again.assign, strict=True))


@pytest.mark.slow
def test_benchmark_command_runs(tmp_path: Path) -> None:
    out = tmp_path / "kmeans.md"
    cmd = [sys.executable, "-m", "benchmarks.bench_kmeans", "--n", "3000", "--dim", "32", "--k", "30"]
    cmd += ["--h-n", "4000", "--h-levels", "40", "8", "--h-steps", "1", "3", "--h-sizes", "1", "2"]
    cmd += ["--target", "500", "--threads", "1", "--out", str(out)]
    subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], check=True, capture_output=True)
    text = out.read_text()
    assert (
        text.count("| same start (random sample) |") == 1
        and "| greedy k-means++ (curation.kmeans default) |" in text
    )
    assert "| faiss's plain k-means++ |" in text
    assert re.search(r"^\| 1 \| 40 -> 8 \| 3 \| 2 \| [\d.]+ s \|", text, re.M)
    assert "Balanced sampling of 500 from 4,000" in text


@pytest.mark.gpu
def test_gpu_and_cpu_paths_agree() -> None:
    import faiss

    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss sees no GPU (faiss-cpu, or no CUDA device)")
    x = blobs()
    start = x[np.random.default_rng(1).choice(len(x), 20, replace=False)]
    cpu = kmeans(x, 20, n_iter=10, init_centroids=start, gpu=False)
    gpu = kmeans(x, 20, n_iter=10, init_centroids=start, gpu=True)
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-4)
    assert (gpu.assign == cpu.assign).mean() > 0.999


def test_small_pools_fit_the_default_levels_and_fit_to_pool_off_keeps_them() -> None:
    from curation.config import ClusterConfig
    from curation.kmeans import check_levels

    default = ClusterConfig()
    assert default.fitted(300) is default  # the pool holds every level: unchanged
    for n in (1, 5, 17, 24, 100, 250):
        fitted = default.fitted(n)
        check_levels(n, list(fitted.n_clusters))  # always valid
        assert fitted.n_clusters[0] <= n
        assert all(a > b > 1 for a, b in zip(fitted.n_clusters, fitted.n_clusters[1:], strict=False))
    assert default.fitted(17).n_clusters == [4] and default.fitted(100) is default  # 64 <= 100 fits
    assert ClusterConfig(n_clusters=[4, 2], resampling_steps=[1], sample_sizes=[2]).fitted(15).n_clusters == [
        4,
        2,
    ]
    per_level = ClusterConfig(n_clusters=[64, 16, 4], resampling_steps=[1, 5, 10], sample_sizes=[2, 3, 4])
    assert per_level.fitted(40).n_clusters == [10, 2]  # 64 > 40: 40 // 4; 16 > 10: 10 // 4
    assert per_level.fitted(40).resampling_steps == [1, 5] and per_level.fitted(40).sample_sizes == [2, 3]
    assert ClusterConfig(fit_to_pool=False).fitted(17).n_clusters == [64, 16, 4]  # then check_levels refuses
