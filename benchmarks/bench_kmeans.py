"""faiss k-means against scikit-learn's KMeans (same data, same iterations, same run), and
hierarchical k-means (Vo et al. 2024) of 1M vectors: time per level, then balanced sampling.

Run: ``nice -n 10 .venv/bin/python -m benchmarks.bench_kmeans`` (defaults: 100,000 x 384, k = 1,000,
10 iterations; hierarchy of 1,000,000 x 384 into 1,000 / 100 / 10 clusters) -> ``benchmarks/results/kmeans.md``.

Data: a skewed mixture (component weights ~ 1 / rank^1.2) of Gaussian blobs, L2-normalised like
embeddings (the hierarchy: a nested mixture, 100 coarse centres of 50 sub-centres each, so the
upper levels have structure to find). Comparisons of faiss against scikit-learn: from the *same* initial centroids (a
random sample of points, given to both; Lloyd iterations only), and each with its own default
initialisation (faiss: random points; scikit-learn: greedy k-means++). Inertia is the sum of squared
distances of every point to its centroid, computed the same way for both; the third row runs faiss
with faiss's own (plain) k-means++, the fourth ``curation.kmeans.kmeans``'s default (greedy k-means++
on a sample of 32 points per centroid, then faiss's Lloyd iterations), both against the same
scikit-learn k-means++ run. ``--threads`` caps
OpenMP/BLAS threads for both libraries.

OpenMP's spin-waiting makes both libraries slower with 2 threads than with 1 when other jobs share
the 2 cores (measured: faiss 20,000 x 200, 10 iterations: 1.0 s on 1 thread, 3.1 s on 2 under load
5-8; 1.5 s with ``OMP_WAIT_POLICY=PASSIVE``), so this sets ``OMP_WAIT_POLICY=PASSIVE`` unless given.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss / scikit-learn load libgomp

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.common import REPO, machine, peak_mb, write_result  # noqa: E402


def mixture(n: int, dim: int, components: int, seed: int) -> np.ndarray:
    """[n, dim] float32 unit vectors from a skewed Gaussian mixture, built in chunks."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(components) + 1) ** 1.2
    centers = rng.normal(size=(components, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = rng.choice(components, n, p=weights / weights.sum())
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 200_000):
        part = labels[start : start + 200_000]
        v = centers[part] + 0.06 * rng.normal(size=(len(part), dim)).astype(np.float32)
        out[start : start + len(part)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def nested_mixture(n: int, dim: int, groups: int, per_group: int, seed: int) -> np.ndarray:
    """[n, dim] unit vectors with two levels of structure: ``groups`` coarse centres (weights ~ 1 /
    rank^1.2), each with ``per_group`` sub-centres around it, points around the sub-centres."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(groups, dim)).astype(np.float32)
    coarse /= np.linalg.norm(coarse, axis=1, keepdims=True)
    fine = np.repeat(coarse, per_group, axis=0) + 0.5 / np.sqrt(dim) * rng.normal(
        size=(groups * per_group, dim)
    ).astype(np.float32)
    fine /= np.linalg.norm(fine, axis=1, keepdims=True)
    weights = np.repeat(1.0 / (np.arange(groups) + 1) ** 1.2, per_group) * rng.uniform(
        0.5, 1.5, groups * per_group
    )
    labels = rng.choice(groups * per_group, n, p=weights / weights.sum())
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 200_000):
        part = labels[start : start + 200_000]
        v = fine[part] + 0.2 / np.sqrt(dim) * rng.normal(size=(len(part), dim)).astype(np.float32)
        out[start : start + len(part)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    from curation.kmeans import assign_to

    return float(assign_to(x, centroids)[1].astype(np.float64).sum())


def faiss_plain_kmeans_pp(x: np.ndarray, k: int, n_iter: int, seed: int):  # type: ignore[no-untyped-def]
    """faiss's own k-means++ (one D^2-weighted draw per centroid) on every point, as a baseline."""
    import faiss

    from curation.kmeans import KMeansResult, assign_to

    km = faiss.Kmeans(x.shape[1], k, niter=n_iter, seed=seed, max_points_per_centroid=len(x) // k + 1,
                      init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)  # fmt: skip
    km.train(x)
    assign, dist = assign_to(x, km.centroids)
    return KMeansResult(km.centroids, assign, dist, float(dist.astype(np.float64).sum()))


def compare(x: np.ndarray, k: int, n_iter: int, seed: int) -> list[str]:
    """Rows: faiss and scikit-learn from the same start, then each with its own init."""
    from sklearn.cluster import KMeans

    from curation.kmeans import kmeans

    start = x[np.random.default_rng(seed).choice(len(x), k, replace=False)]
    runs = [  # label, faiss init, scikit-learn init (its k-means++ run is shared by the last two rows)
        ("same start (random sample)", "given", "given"),
        ("own defaults: faiss random, sklearn k-means++", "random", "k-means++"),
        ("faiss's plain k-means++", "faiss++", "k-means++"),
        ("greedy k-means++ (curation.kmeans default)", "kmeans++", "k-means++"),
    ]
    rows: list[str] = []
    refs: dict[str, tuple[float, float, int]] = {}
    for label, faiss_init, sk_init in runs:
        t0 = time.perf_counter()
        if faiss_init == "given":
            ours = kmeans(x, k, n_iter=n_iter, seed=seed, init_centroids=start)
        elif faiss_init == "faiss++":
            ours = faiss_plain_kmeans_pp(x, k, n_iter, seed)
        else:
            ours = kmeans(x, k, n_iter=n_iter, seed=seed, init=faiss_init)  # type: ignore[arg-type]
        t_faiss = time.perf_counter() - t0
        if sk_init not in refs:
            t0 = time.perf_counter()
            init = start if sk_init == "given" else "k-means++"
            ref = KMeans(
                k, init=init, n_init=1, max_iter=n_iter, tol=0, algorithm="lloyd", random_state=seed
            ).fit(x)
            refs[sk_init] = (time.perf_counter() - t0, inertia(x, ref.cluster_centers_), int(ref.n_iter_))
        t_sk, i_sk, its = refs[sk_init]
        rows.append(
            f"| {label} | {t_faiss:.1f} s | {t_sk:.1f} s ({its} it) | {t_sk / t_faiss:.2f}x | "
            f"{ours.inertia:,.1f} | {i_sk:,.1f} | {100 * (ours.inertia / i_sk - 1):+.2f}% |"
        )
        print(rows[-1], flush=True)
    return rows


def hierarchy(
    x: np.ndarray, levels: list[int], steps: list[int], sizes: list[int], n_iter: int, target: int
) -> list[str]:
    from curation.config import ClusterConfig
    from curation.kmeans import hierarchical_kmeans
    from curation.sampling import balanced_sample

    cfg = ClusterConfig(
        n_clusters=levels, resampling_steps=steps, sample_sizes=sizes, n_iter=n_iter, gpu="off"
    )
    t0 = time.perf_counter()
    h = hierarchical_kmeans(x, cfg, progress=lambda d, t: print(f"  k-means run {d}/{t}", flush=True))
    total = time.perf_counter() - t0
    rows = []
    below = len(x)
    for level, k in enumerate(levels):
        s = h.sizes(level)
        rows.append(
            f"| {level} | {below:,} -> {k:,} | {cfg.level(level)[1]} | {cfg.level(level)[2]} | "
            f"{h.seconds[level]:.1f} s | {s.max():,} / {int(np.median(s)):,} / {(s == 0).sum()} |"
        )
        below = k
    t0 = time.perf_counter()
    picked = balanced_sample(h, target, "random", seed=0)
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    balanced_sample(h, target, "closest", seed=0)
    t_closest = time.perf_counter() - t0
    after = np.bincount(h.assign[0][picked], minlength=levels[0])
    rows.append(f"| all levels | | | | {total:.1f} s | |")
    rows.append("")
    rows.append(
        f"Balanced sampling of {target:,} from {len(x):,}: {t_sample:.2f} s (random), {t_closest:.2f} s "
        f"(closest); level-0 cluster sizes max {after.max():,} / median {int(np.median(after)):,} after "
        f"(pool: {h.sizes(0).max():,} / {int(np.median(h.sizes(0))):,})."
    )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--h-n", type=int, default=1_000_000, help="vectors of the hierarchy run (0: skip it)")
    p.add_argument("--h-levels", type=int, nargs="+", default=[1000, 100, 10])
    p.add_argument(
        "--h-steps", type=int, nargs="+", default=[1, 10, 10], help="k-means runs per level (1 = plain)"
    )
    p.add_argument("--h-sizes", type=int, nargs="+", default=[1, 5, 5])
    p.add_argument("--h-iters", type=int, default=10)
    p.add_argument("--target", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/kmeans.md")
    args = p.parse_args()
    import faiss
    import threadpoolctl

    faiss.omp_set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(args.threads)
    load = os.getloadavg()[0]
    lines = [
        "# k-means: faiss vs scikit-learn, hierarchical k-means",
        "",
        f"Machine: {machine()}; {args.threads} threads for both libraries; 1-min load average at start {load:.1f} "
        "(the CPU is shared with other jobs: times are of one run, the ratio is what compares).",
        f"Command: `nice -n 10 .venv/bin/python -m benchmarks.bench_kmeans {' '.join(sys.argv[1:])}`"
        f" (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}).",
        "",
        f"## faiss `Kmeans` vs scikit-learn `KMeans` (lloyd): {args.n:,} x {args.dim}, k = {args.k:,}, {args.iters} iterations",
        "",
        "| start | faiss | scikit-learn | speed-up | faiss inertia | sklearn inertia | faiss vs sklearn |",
        "|---|---|---|---|---|---|---|",
    ]
    x = mixture(args.n, args.dim, components=2 * args.k, seed=args.seed)
    lines += compare(x, args.k, args.iters, args.seed)
    del x
    if args.h_n:
        lines += [
            "",
            f"## hierarchical k-means (Vo et al. 2024) of {args.h_n:,} x {args.dim}, {args.h_iters} iterations per run",
            "",
            "| level | points -> clusters | k-means runs (1 = no resampling) | sample size | time | cluster size max / median / empty |",
            "|---|---|---|---|---|---|",
        ]
        x = nested_mixture(args.h_n, args.dim, groups=100, per_group=50, seed=args.seed + 1)
        lines += hierarchy(x, args.h_levels, args.h_steps, args.h_sizes, args.h_iters, args.target)
    lines += ["", f"Peak RSS {peak_mb():,.0f} MB.", ""]
    write_result(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
