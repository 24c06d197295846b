"""faiss k-means and hierarchical k-means with resampling (Vo et al. 2024, arXiv:2405.15613).

Hierarchical k-means is built bottom-up: level 0 (the finest) clusters the vectors, level ``l``
clusters the centroids of level ``l - 1``. Within a level the paper's resampling steps move the
centroids from following the density of the data toward covering its support evenly: take the
``sample_size`` points closest to each centroid, run k-means again on those points only, and
re-assign every point of the level to the new centroids (reference: facebookresearch/
ssl-data-curation, ``hierarchical_kmeans_with_resampling``; our code is written from the paper).

Counting: ``ClusterConfig.resampling_steps`` counts the k-means runs of a level as the reference
does (``n_resampling_steps`` in its configs): 1 = plain k-means, n = the first run plus n - 1
resampling steps; the paper's web-images config is ``[1, 10, 10, 10]``. :func:`resampled_kmeans`
takes the number of resampling steps after the first run (``runs - 1``).

faiss notes: ``faiss.Kmeans`` trains on at most ``k * max_points_per_centroid`` points and
subsamples silently above that (its default is 256); :func:`kmeans` passes a value that keeps every
point unless one is given. The final assignment and the inertia are always over all points.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

Init = Literal["random", "kmeans++"]
Progress = Callable[[int, int], None]
# Greedy k-means++ runs on a seeded sample of at most this many points per centroid: measured on
# 100,000 x 384, k = 1,000 (benchmarks/results/kmeans.md), 16, 32 and 64 points per centroid end 10
# Lloyd iterations within 0.07% of each other and of the whole-pool init, at 2.4 / 6.8 / 16.5 s.
INIT_POINTS_PER_CENTROID = 32


@dataclass(frozen=True)
class KMeansResult:
    """``centroids`` [k, D] float32, ``assign`` [N] int64 cluster of each point, ``distances`` [N]
    squared L2 distance of each point to its centroid, ``inertia`` their sum (float64)."""

    centroids: np.ndarray
    assign: np.ndarray
    distances: np.ndarray
    inertia: float


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu). Probed when called, never at import."""
    import faiss

    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def resolve_gpu(gpu: bool | str | None) -> bool:
    """``None``/``"auto"``: use GPUs when faiss sees one; ``True``/``"on"`` without one is an error."""
    if gpu is None or gpu == "auto":
        return gpu_count() > 0
    if gpu in (True, "on"):
        if gpu_count() == 0:
            raise ValueError(
                "k-means on GPU was asked for (gpu=on) but faiss sees no GPU (faiss-cpu installed?)"
            )
        return True
    if gpu in (False, "off"):
        return False
    raise ValueError(f"gpu must be auto, on or off; got {gpu!r}")


def _as_f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"k-means needs a 2-d array [N, D]; got shape {x.shape}")
    return x


def assign_to(x: np.ndarray, centroids: np.ndarray, gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row of ``x`` [N, D] -> (assign [N] int64, squared distance [N] float32).

    Exact search (``IndexFlatL2``); ties go to the lower centroid id (faiss's order)."""
    import faiss

    x, centroids = _as_f32(x), _as_f32(centroids)
    index: Any = faiss.IndexFlatL2(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(centroids)
    dist, idx = index.search(x, 1)
    return idx[:, 0].astype(np.int64), np.maximum(dist[:, 0], 0.0)


def greedy_kmeans_pp(
    x: np.ndarray, k: int, seed: int = 0, n_trials: int | None = None, max_points: int | None = None
) -> np.ndarray:
    """[k, D] float32 initial centroids by greedy k-means++ (Arthur & Vassilvitskii 2007, the variant
    scikit-learn uses): each new centroid is the best of ``n_trials`` candidates (default
    ``2 + ln k``) drawn with probability proportional to the squared distance to the nearest chosen
    centroid, "best" being the one that lowers the total squared distance most. Plain k-means++
    (one candidate, faiss's) ends 10 Lloyd iterations 1.5% above scikit-learn's inertia on the
    benchmark data; greedy ends level with it. Runs on a seeded sample of ``max_points`` points."""
    rng = np.random.default_rng(seed)
    x = _as_f32(x)
    if max_points is not None and len(x) > max_points:
        x = x[np.sort(rng.choice(len(x), max_points, replace=False))]
    n = len(x)
    trials = n_trials or 2 + int(math.log(k))
    sq = np.einsum("ij,ij->i", x, x)
    centroids = np.empty((k, x.shape[1]), np.float32)
    first = int(rng.integers(n))
    centroids[0] = x[first]
    nearest = np.maximum(sq - 2.0 * (x @ x[first]) + sq[first], 0.0)  # squared distance to the chosen
    for i in range(1, k):
        cumulative = np.cumsum(nearest, dtype=np.float64)
        if cumulative[-1] <= 0:  # every point sits on a chosen centroid: take any unchosen point
            candidates = rng.choice(n, trials)
        else:
            draws = rng.random(trials) * cumulative[-1]
            candidates = np.minimum(np.searchsorted(cumulative, draws, side="right"), n - 1)
        d = sq[:, None] - 2.0 * (x @ x[candidates].T) + sq[candidates][None, :]
        np.maximum(d, 0.0, out=d)
        np.minimum(d, nearest[:, None], out=d)
        best = int(np.argmin(d.sum(axis=0, dtype=np.float64)))
        centroids[i] = x[candidates[best]]
        nearest = np.ascontiguousarray(d[:, best])
    return centroids


def kmeans(
    x: np.ndarray,
    k: int,
    n_iter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int | None = None,
    gpu: bool | None = None,
    init: Init = "kmeans++",
    init_centroids: np.ndarray | None = None,
) -> KMeansResult:
    """Lloyd's k-means of ``x`` [N, D] into ``k`` clusters with faiss (L2 distance), ``n_iter`` iterations.

    ``max_points_per_centroid``: train on at most ``k`` times this many points (a seeded subsample);
    None trains on every point. ``gpu``: None = when faiss sees one. ``init``: greedy k-means++ (as
    scikit-learn; :func:`greedy_kmeans_pp` on at most ``INIT_POINTS_PER_CENTROID * k`` points) or
    uniform random points (faiss's default, cheaper for huge k).
    ``init_centroids`` [k, D] starts from given centroids instead. Empty clusters are re-seeded by
    faiss by splitting large ones. ``k > N`` is a one-line error.
    """
    import faiss

    x = _as_f32(x)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(
            f"k-means of {n} points into {k} clusters: k must be between 1 and the number of points"
        )
    use_gpu = resolve_gpu(gpu)
    cap = max_points_per_centroid if max_points_per_centroid is not None else math.ceil(n / k) + 1
    if init not in ("random", "kmeans++"):
        raise ValueError(f"unknown k-means init {init!r}; valid: ['kmeans++', 'random']")
    if init == "kmeans++" and init_centroids is None:
        init_centroids = greedy_kmeans_pp(x, k, seed, max_points=INIT_POINTS_PER_CENTROID * k)
    km = faiss.Kmeans(
        d,
        k,
        niter=n_iter,
        seed=seed,
        max_points_per_centroid=cap,
        min_points_per_centroid=1,  # small levels are legitimate here, no warnings
        gpu=use_gpu,
        verbose=False,
    )
    km.train(x, init_centroids=None if init_centroids is None else _as_f32(init_centroids))
    centroids = np.asarray(km.centroids, dtype=np.float32)
    assign, dist = assign_to(x, centroids, use_gpu)
    return KMeansResult(centroids, assign, dist, float(dist.astype(np.float64).sum()))


def closest_per_cluster(assign: np.ndarray, distances: np.ndarray, per_cluster: int) -> np.ndarray:
    """Indices of the ``per_cluster`` points nearest their centroid in every cluster (all of a smaller
    cluster), ascending; ties broken by index. ``assign``, ``distances``: [N]."""
    order = np.lexsort((np.arange(len(assign)), distances, assign))
    sorted_assign = assign[order]
    starts = np.searchsorted(sorted_assign, sorted_assign, side="left")
    rank = np.arange(len(order)) - starts
    return np.sort(order[rank < per_cluster])


def resampled_kmeans(
    x: np.ndarray,
    k: int,
    steps: int,
    sample_size: int,
    n_iter: int,
    seed: int,
    max_points_per_centroid: int | None = None,
    gpu: bool = False,
    on_step: Callable[[], None] | None = None,
    init: Init = "kmeans++",
) -> KMeansResult:
    """One level of Vo et al. 2024: k-means of ``x`` [N, D], then ``steps`` resampling steps.

    A step takes the ``sample_size`` points closest to each current centroid, runs k-means on them
    alone (seed ``seed + step``) and re-assigns every point. The centroids returned are the last
    step's (fitted to the sample, as in the paper), ``assign``/``distances``/``inertia`` are of all
    points. When empty clusters leave fewer than ``k`` sampled points, the per-cluster sample grows
    (doubling) until there are ``k``.
    """
    result = kmeans(x, k, n_iter, seed, max_points_per_centroid, gpu, init)
    if on_step:
        on_step()
    for step in range(1, steps + 1):
        per = sample_size
        chosen = closest_per_cluster(result.assign, result.distances, per)
        while len(chosen) < k:
            per *= 2
            chosen = closest_per_cluster(result.assign, result.distances, per)
        fitted = kmeans(x[chosen], k, n_iter, seed + step, max_points_per_centroid, gpu, init)
        assign, dist = assign_to(x, fitted.centroids, gpu)
        result = KMeansResult(fitted.centroids, assign, dist, float(dist.astype(np.float64).sum()))
        if on_step:
            on_step()
    return result


@dataclass(frozen=True)
class Hierarchy:
    """Hierarchical k-means of N points into L levels (0 = finest).

    ``centroids[l]`` [K_l, D]; ``assign[l]`` [N] the level-``l`` cluster of every point;
    ``parents[l]`` [K_l] the level-``l + 1`` cluster of each level-``l`` cluster (L - 1 arrays);
    ``distances`` [N] squared L2 distance of each point to its level-0 centroid; ``inertia[l]``
    and ``seconds[l]`` per level (inertia of that level's own k-means input).
    """

    centroids: list[np.ndarray]
    assign: list[np.ndarray]
    parents: list[np.ndarray]
    distances: np.ndarray
    inertia: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def n_levels(self) -> int:
        return len(self.centroids)

    @property
    def n_points(self) -> int:
        return len(self.distances)

    def sizes(self, level: int) -> np.ndarray:
        """Points in each level-``level`` cluster, [K_level] int64 (empty clusters are 0)."""
        return np.bincount(self.assign[level], minlength=len(self.centroids[level])).astype(np.int64)

    def levels_matrix(self) -> np.ndarray:
        """[N, L] int64: the cluster of every point at every level (column 0 = finest)."""
        return np.stack(self.assign, axis=1).astype(np.int64)


def check_levels(n: int, n_clusters: list[int]) -> None:
    """One-line error before any work when a level asks for more clusters than it has points."""
    below = n
    for level, k in enumerate(n_clusters):
        if k < 1 or k > below:
            what = f"{below} points" if level == 0 else f"{below} level-{level - 1} centroids"
            raise ValueError(
                f"cluster level {level} asks for {k} clusters but has only {what} to cluster "
                f"(n_clusters={n_clusters}, finest first)"
            )
        below = k


def hierarchical_kmeans(x: np.ndarray, cfg: Any, progress: Progress | None = None) -> Hierarchy:
    """Hierarchical k-means of ``x`` [N, D] by ``cfg`` (a ``curation.config.ClusterConfig``).

    ``progress(done, total)`` is called after each k-means run; total = the sum over levels of
    ``cfg.resampling_steps`` (k-means runs per level, 1 = plain k-means). Level ``l``'s seed is ``cfg.seed + 1000 * l``. Initialisation:
    ``cfg.init`` when the config has it, else k-means++ (as the reference).
    """
    x = _as_f32(x)
    n_levels = len(cfg.n_clusters)
    check_levels(len(x), list(cfg.n_clusters))
    use_gpu = resolve_gpu(cfg.gpu)
    init: Init = cfg.init
    total = sum(cfg.level(i)[1] for i in range(n_levels))
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    centroids: list[np.ndarray] = []
    own_assign: list[np.ndarray] = []
    inertia: list[float] = []
    seconds: list[float] = []
    distances = np.zeros(len(x), np.float32)
    points = x
    for level in range(n_levels):
        k, runs, sample_size = cfg.level(level)
        start = time.perf_counter()
        res = resampled_kmeans(
            points, k, runs - 1, sample_size, cfg.n_iter, cfg.seed + 1000 * level,
            cfg.max_points_per_centroid, use_gpu, tick, init,
        )  # fmt: skip
        seconds.append(time.perf_counter() - start)
        log.info("k-means level %d: %d -> %d clusters in %.1f s", level, len(points), k, seconds[-1])
        if level == 0:
            distances = res.distances
        centroids.append(res.centroids)
        own_assign.append(res.assign)
        inertia.append(res.inertia)
        points = res.centroids
    assign = [own_assign[0]]
    for level in range(1, n_levels):
        assign.append(own_assign[level][assign[-1]])
    return Hierarchy(centroids, assign, own_assign[1:], distances, inertia, seconds)
