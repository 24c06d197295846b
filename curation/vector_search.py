"""k-nearest-neighbour search by cosine similarity with faiss: exact for small sets, IVF or HNSW for
large ones, on the GPU when faiss sees one.

Vectors are L2-normalised rows (float16 or float32 [N, D]; searched as float32), so faiss's inner
product is the cosine similarity. :func:`choose_index` picks the index from the number of base vectors:

- ``flat`` (``IndexFlatIP``): exact, every query against every base vector; up to ``exact_max``
  vectors (a self-search of N x D costs N^2 D multiply-adds: 1e12 at 50,000 x 384);
- ``ivf`` (``IndexIVFFlat``, Jégou et al. 2011's inverted file with exact distances inside the cells):
  k-means to ``nlist`` cells (default ``4 * sqrt(N)``, trained on ``40 * nlist`` vectors),
  each query scans its ``nprobe`` nearest cells. Above ``exact_max`` on CPU and always on GPU
  (faiss GPU has no HNSW);
- ``hnsw`` (``IndexHNSWFlat``, Malkov & Yashunin 2018): a graph of ``hnsw_m`` links per vector,
  searched with ``hnsw_ef_search`` candidates; no training, but building it costs more than IVF's k-means
  on 2 cores (``benchmarks/bench_neardup.py``), so ``auto`` chooses it only when asked by name.

Near-duplicates are close pairs (cosine >= 0.5 and usually >= 0.8), which both approximate indexes
find far more reliably than the k-NN of arbitrary points; the benchmark measures both recalls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

INDEXES = ("auto", "flat", "ivf", "hnsw")


@dataclass(frozen=True)
class Search:
    """Search settings as plain values: ``SemanticDedupConfig``'s fields and defaults, plus
    ``nlist`` (None: ``4 * sqrt(N)``), ``hnsw_m``, ``ef_construction`` and ``gpu`` (None: when
    faiss sees one)."""

    index: str = "auto"
    exact_max: int = 200_000
    nprobe: int = 32
    hnsw_ef_search: int = 128
    nlist: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 80
    gpu: bool | None = None

    @classmethod
    def of(cls, cfg: Any) -> Search:
        """The settings of a config object such as ``SemanticDedupConfig`` (its ``index``,
        ``exact_max``, ``nprobe``, ``hnsw_ef_search``; the fields it lacks at the defaults above)."""
        names = (
            "index",
            "exact_max",
            "nprobe",
            "hnsw_ef_search",
            "nlist",
            "hnsw_m",
            "ef_construction",
            "gpu",
        )
        return cls(**{n: getattr(cfg, n) for n in names if hasattr(cfg, n)})


def gpu_count() -> int:
    """GPUs faiss can use (0 for a CPU-only build); probed when called, never at import."""
    import faiss

    return int(getattr(faiss, "get_num_gpus", lambda: 0)())


def settings(cfg: Any) -> Search:
    """``cfg`` as :class:`Search` (a config object's search fields, or a Search itself)."""
    return cfg if isinstance(cfg, Search) else Search.of(cfg)


def _use_gpu(cfg: Search) -> bool:
    return gpu_count() > 0 if cfg.gpu is None else cfg.gpu and gpu_count() > 0


def choose_index(n: int, dim: int, cfg: Any) -> str:
    """``"flat"``, ``"ivf"`` or ``"hnsw"`` for ``n`` base vectors of ``dim`` dimensions.

    ``cfg.index`` other than ``"auto"`` is taken as is (an unknown name is a one-line ValueError);
    ``auto``: exact up to ``cfg.exact_max`` vectors, else IVF (module docstring)."""
    if cfg.index not in INDEXES:
        raise ValueError(f"unknown index {cfg.index!r}; valid: {', '.join(INDEXES)}")
    if dim < 1:
        raise ValueError(f"vectors must have at least one dimension, got {dim}")
    if cfg.index != "auto":
        return str(cfg.index)
    return "flat" if n <= cfg.exact_max else "ivf"


def ivf_nlist(n: int, cfg: Any) -> int:
    """IVF cells: ``cfg.nlist`` or ``4 * sqrt(n)`` (the low end of faiss's 4-16 sqrt(N) guideline:
    k-means training is the cost that grows with it), at least 1 and at most ``n // 39`` (faiss
    wants 39 training points per cell)."""
    wanted = settings(cfg).nlist or round(4 * math.sqrt(n))
    return int(max(1, min(wanted, n // 39 if n >= 39 else 1)))


def _as_f32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected vectors [N, D]; got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _chunks(x: np.ndarray, size: int = 65_536) -> Any:
    for start in range(0, len(x), size):
        yield _as_f32(x[start : start + size])


def build_index(base: np.ndarray, cfg: Any, kind: str | None = None, seed: int = 0) -> Any:
    """A faiss index holding ``base`` [N, D] (added in chunks, so float16 input is converted a
    chunk at a time); ``kind`` defaults to :func:`choose_index`. On GPU when present (not HNSW)."""
    import faiss

    cfg = settings(cfg)
    n, dim = base.shape
    kind = kind or choose_index(n, dim, cfg)
    gpu = _use_gpu(cfg) and kind != "hnsw"
    index: Any
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, ivf_nlist(n, cfg), faiss.METRIC_INNER_PRODUCT)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(cfg.hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
    else:
        raise ValueError(f"unknown index {kind!r}; valid: flat, ivf, hnsw")
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    if kind == "ivf":
        nlist = ivf_nlist(n, cfg)
        rng = np.random.default_rng(seed)
        # 40 points per cell: just above faiss's minimum of 39, so k-means costs 40 * nlist^2 * D
        sample = np.sort(rng.choice(n, min(n, 40 * nlist), replace=False))
        index.train(_as_f32(base[sample]))
    for chunk in _chunks(base):
        index.add(chunk)
    return index


def _params(kind: str, cfg: Search) -> Any:
    import faiss

    swig: Any = faiss  # faiss's bundled stubs lack the SearchParameters keyword constructors
    if kind == "ivf":
        return swig.SearchParametersIVF(nprobe=int(cfg.nprobe))
    if kind == "hnsw":
        return swig.SearchParametersHNSW(efSearch=int(cfg.hnsw_ef_search))
    return None


def search_index(
    index: Any, kind: str, queries: np.ndarray, k: int, cfg: Any, gpu: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(sims [Q, k] float32, idx [Q, k] int64) of ``queries`` in a built index, in chunks of 65,536
    queries; missing neighbours (fewer than k reachable) are idx -1, sim -inf. ``gpu``: the index
    is a faiss GPU index (its nprobe is set on the object; CPU indexes take search parameters)."""
    import faiss

    cfg = settings(cfg)
    params = None if gpu else _params(kind, cfg)
    if gpu and kind == "ivf":
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", int(cfg.nprobe))
    sims, idx = [], []
    for chunk in _chunks(queries):
        d, i = index.search(chunk, k) if params is None else index.search(chunk, k, params=params)
        sims.append(d)
        idx.append(i)
    if not sims:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    s, i = np.concatenate(sims), np.concatenate(idx).astype(np.int64)
    s[i < 0] = -np.inf
    return s, i


def search(base: np.ndarray, queries: np.ndarray, k: int, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar base rows of each query: (sims [Q, k], idx [Q, k]), best first.

    base [N, D], queries [Q, D]: L2-normalised float16/float32 rows. ``k`` is capped at N."""
    if base.ndim != 2 or queries.ndim != 2 or base.shape[1] != queries.shape[1]:
        raise ValueError(f"base {base.shape} and queries {queries.shape} must be [N, D] and [Q, D]")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(base)
    if n == 0:
        return np.full((len(queries), 0), -np.inf, np.float32), np.full((len(queries), 0), -1, np.int64)
    cfg = settings(cfg)
    kind = choose_index(n, base.shape[1], cfg)
    index = build_index(base, cfg, kind)
    return search_index(index, kind, queries, min(k, n), cfg, gpu=_use_gpu(cfg) and kind != "hnsw")


def exact_search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN by numpy matrix products (the reference the faiss paths are tested against)."""
    b, q = _as_f32(base), _as_f32(queries)
    k = min(k, len(b))
    sims = q @ b.T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx.astype(np.int64)
