"""Copies among small images (CIFAR-sized): pixel retrieval, then aligned high-pass correlation.

At 32 px a learned descriptor sees too little: the bootstrap class token matched 0.68% of CIFAR-10
test images to a train image at cosine 0.99, a fifth of the 3.3% Barz & Denzler (2020) found, and at
lower thresholds other photos of a similar scene crowd in. A copy of a small image is, however, the
same pixels after a small shift, scale, flip or colour change, and that can be checked directly:

1. **Candidates**: every image as a 32 x 32 grey vector (mean-centred, unit length), each query and
   its mirror searched for its ``k`` nearest pool images (``curation.vector_search``).
2. **Verification**: the high-pass grey image (the image minus its 5 x 5 box blur: edges and texture,
   not the smooth sky-and-sea gradients that make unrelated photos correlate), a 24 x 24 centre
   window of the query resampled at 5 scales (0.85-1.17) against the candidate's 24 x 24 windows at
   every shift of up to 4 px: the score is the best normalised cross-correlation (-1..1).

A pair is a copy when the score reaches the threshold calibrated in ``docs/semantic-dedup.md``
(``benchmarks/measure_small_copies.py``: generated edits of CIFAR-10 train photos, a calibration and
a held-out split). Everything is numpy on the CPU; the cost is ``k`` x 2 x 405 window correlations per
query.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

SIDE = 32  # every image is compared at 32 x 32 grey
WINDOW = 24
SHIFT = 4  # candidate windows at offsets -SHIFT..SHIFT around the centre
SCALES = (0.85, 0.92, 1.0, 1.08, 1.17)
BLUR = 5


def grey32(images: Iterable[Image.Image]) -> np.ndarray:
    """[N, 32, 32] float32 grey versions (bilinear resize; the aspect ratio is not kept)."""
    out = [
        np.asarray(img.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR), dtype=np.float32)
        for img in images
    ]
    return np.stack(out) if out else np.zeros((0, SIDE, SIDE), np.float32)


def _unit_rows(v: np.ndarray) -> np.ndarray:
    v = v - v.mean(axis=-1, keepdims=True)
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-6)


def retrieval_vectors(grey: np.ndarray) -> np.ndarray:
    """[N, 1024] mean-centred unit grey vectors (the candidate search's space)."""
    return _unit_rows(grey.reshape(len(grey), -1)).astype(np.float32)


def highpass(grey: np.ndarray) -> np.ndarray:
    """[N, 32, 32]: each image minus its BLUR x BLUR box blur (edges padded by repetition)."""
    pad = BLUR // 2
    padded = np.pad(grey, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    box = sliding_window_view(padded, (BLUR, BLUR), axis=(1, 2)).mean(axis=(-1, -2))
    return (grey - box).astype(np.float32)


def query_patches(hp: np.ndarray) -> np.ndarray:
    """[S, 576]: the centre window of one high-pass image ``hp`` [32, 32] resampled at each scale."""
    img = Image.fromarray(hp.astype(np.float32), mode="F")
    centre = SIDE / 2
    patches = []
    for s in SCALES:
        half = WINDOW / s / 2
        box = (centre - half, centre - half, centre + half, centre + half)
        patch = img.transform((WINDOW, WINDOW), Image.Transform.EXTENT, box, Image.Resampling.BILINEAR)
        patches.append(np.asarray(patch, dtype=np.float32).ravel())
    return _unit_rows(np.stack(patches))


def candidate_windows(hp: np.ndarray) -> np.ndarray:
    """[M, A, 576] unit windows of high-pass images ``hp`` [M, 32, 32] at every shift."""
    lo = (SIDE - WINDOW) // 2 - SHIFT
    region = hp[:, lo : lo + WINDOW + 2 * SHIFT, lo : lo + WINDOW + 2 * SHIFT]
    views = sliding_window_view(region, (WINDOW, WINDOW), axis=(1, 2))  # [M, 9, 9, 24, 24]
    return _unit_rows(views.reshape(len(hp), -1, WINDOW * WINDOW))


def aligned_scores(query_hp: np.ndarray, cand_hp: np.ndarray) -> np.ndarray:
    """[M]: the best correlation of the query [32, 32] with each candidate [M, 32, 32] over every
    scale of the query and shift of the candidate (the query's mirror is another query)."""
    if len(cand_hp) == 0:
        return np.zeros(0, np.float32)
    corr = candidate_windows(cand_hp) @ query_patches(query_hp).T  # [M, A, S]
    return corr.reshape(len(cand_hp), -1).max(axis=1)


def match_small(
    query_grey: np.ndarray, pool_grey: np.ndarray, k: int = 10, progress: object = None
) -> tuple[np.ndarray, np.ndarray]:
    """For every pool image, its best-verified query: ``(query index [P] (-1: no candidate), score [P])``.

    Each query (``query_grey`` [Q, 32, 32]) and its mirror take their ``k`` nearest pool images
    (``pool_grey`` [P, 32, 32]) by grey vector; each candidate pair is scored by
    :func:`aligned_scores`; a pool image keeps the highest score any query gave it. ``progress``: an
    optional ``(done, total)`` callable, called every 256 queries."""
    from curation.vector_search import Search, search

    n_pool = len(pool_grey)
    best_query = np.full(n_pool, -1, np.int64)
    best_score = np.full(n_pool, -np.inf, np.float32)
    if n_pool == 0 or len(query_grey) == 0:
        return best_query, best_score
    queries = np.concatenate([query_grey, query_grey[:, :, ::-1]])  # mirrors after the originals
    _, idx = search(
        retrieval_vectors(pool_grey),
        retrieval_vectors(queries),
        min(k, n_pool),
        Search(exact_max=max(200_000, n_pool)),
    )
    pool_hp, query_hp = highpass(pool_grey), highpass(np.ascontiguousarray(queries))
    n = len(query_grey)
    for q in range(len(queries)):
        cand = idx[q][idx[q] >= 0]
        scores = aligned_scores(query_hp[q], pool_hp[cand])
        better = scores > best_score[cand]
        best_score[cand[better]] = scores[better]
        best_query[cand[better]] = q % n
        if callable(progress) and (q + 1) % 256 == 0:
            progress(q + 1, len(queries))
    return best_query, best_score
