"""Image retrieval: recall@k of queries against a gallery, by cosine similarity (faiss).

Recall@k (the metric-learning convention, e.g. Oh Song et al. 2016, Stanford Online Products): the
fraction of queries with at least one gallery item of the query's class among its k nearest
neighbours. Features are L2-normalised, so faiss's inner-product index ranks by cosine similarity.
faiss runs on a GPU when it has one (:func:`faiss_gpu_available`), else on CPU; both are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def faiss_gpu_available() -> bool:
    """True when this faiss build sees a GPU (faiss-gpu on a CUDA machine)."""
    import faiss

    return bool(getattr(faiss, "get_num_gpus", lambda: 0)() > 0)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def nearest(query: np.ndarray, gallery: np.ndarray, k: int, use_gpu: bool | None = None) -> np.ndarray:
    """Indices [M, k] of each query's ``k`` most cosine-similar gallery rows, most similar first."""
    import faiss

    g = _normalised(gallery)
    index: Any = faiss.IndexFlatIP(g.shape[1])
    if use_gpu is None:
        use_gpu = faiss_gpu_available()
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(g)
    _, idx = index.search(_normalised(query), min(k, len(g)))
    return idx


def recall_at_k(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Sequence[int] = (1, 5),
    use_gpu: bool | None = None,
) -> dict[int, float]:
    """{k: recall@k (0..1)} of ``query`` [M, D] against ``gallery`` [N, D]."""
    if len(query) == 0 or len(gallery) == 0:
        raise ValueError(f"retrieval needs queries and a gallery (got {len(query)} and {len(gallery)})")
    idx = nearest(query, gallery, max(ks), use_gpu)
    hits = np.asarray(gallery_labels)[idx] == np.asarray(query_labels)[:, None]  # [M, k]
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}
