"""Geometric verification of a candidate copy pair: local features matched, a transform fitted by RANSAC.

A global descriptor says two images look alike; a copy also shares *where* things are, up to the
transform the copy-maker applied. For a pair (a, b): SIFT keypoints and descriptors of each (Lowe 2004,
``cv2.SIFT_create``), nearest-neighbour matches kept by Lowe's ratio test (best distance < ``ratio`` x the
second best), then a 2-D affine transform fitted to the matched points with RANSAC
(``cv2.estimateAffine2D``: 6 degrees of freedom, so resizes that change the aspect, crops, borders,
caption bands and small rotations all fit; Fischler & Bolles 1981). The **inliers** (matches within
``reproj`` of the fitted transform) are the score: unrelated photos keep a handful, copies dozens.

- **Flips**: a mirrored copy has no consistent affine transform with its original (a reflection has
  determinant < 0 and SIFT descriptors are not mirror-invariant), so b is also matched as its mirror
  image and the better of the two counts (``GeometricMatch.mirrored`` says which).
- **Small and large images**: each image is resized so its long side is at most ``max_side`` and its
  short side at least ``min_side`` where that fits (bicubic), so keypoint scales compare; an image with
  fewer than 3 keypoints, or a pair with fewer than 4 ratio-test matches, scores 0 inliers.
- **Overlaid text**: two different photos carrying the same caption or watermark match on the text
  alone; such inliers crowd a thin band, so ``GeometricMatch.spread`` reports how much of each image the
  inliers cover, and :func:`is_copy` asks for a minimum spread. The cover is the box between the 10th and
  90th percentile of the inliers' x and of their y, as a fraction of the image's area (the smaller of the
  two images' fractions): a convex hull was tried first, and the one or two stray inliers an affine fit
  to points on one line of text picks up far from it stretched the hull of 59 caption~caption pairs of
  different photos past any threshold true copies clear (measured in ``docs/copy-detection.md``).

RANSAC's random draws use OpenCV's RNG, seeded per call: results are deterministic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

MAX_SIDE = 512
MIN_SIDE = 192
N_FEATURES = 500
RATIO = 0.75
REPROJ = 0.015
# Names the algorithm and its parameters: stored matches (data_catalog.matches) of another id are not
# reused. Change it with anything that changes a match's measurements.
VERIFIER_ID = f"sift{N_FEATURES}-side{MIN_SIDE}-{MAX_SIDE}-ratio{RATIO}-affine{REPROJ}-mirror-cover10"


@dataclass(frozen=True)
class LocalFeatures:
    """SIFT keypoints ``points`` [K, 2] (x, y in pixels of the working image of ``size`` (w, h)) and
    ``descriptors`` [K, 128] uint8 (OpenCV's SIFT values are integers 0..255: a quarter of the memory of
    float32 for caches of many images); ``mirrored``: the same of the horizontally mirrored image."""

    points: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]
    mirrored: LocalFeatures | None = None


@dataclass(frozen=True)
class GeometricMatch:
    """``inliers`` of the best transform, ``matches`` that passed the ratio test, ``spread`` (the inliers'
    10-90 percentile box over the image area, the smaller of a's and b's, 0..1), and whether b matched as
    its ``mirrored`` image."""

    inliers: int
    matches: int
    spread: float
    mirrored: bool


def working_gray(img: Image.Image, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE) -> np.ndarray:
    """Luma [h, w] uint8 of ``img`` resized so the long side <= ``max_side`` and, where that allows, the
    short side >= ``min_side``."""
    w, h = img.size
    f = min(max_side / max(w, h), max(1.0, min_side / min(w, h)))
    if f != 1.0:
        img = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _sift(gray: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    sift = cv2.SIFT_create(nfeatures=n_features)  # type: ignore[attr-defined]  # (the stubs lag)
    keypoints, desc = sift.detectAndCompute(gray, None)
    if desc is None or len(keypoints) == 0:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
    return np.array([k.pt for k in keypoints], dtype=np.float32), np.clip(np.rint(desc), 0, 255).astype(
        np.uint8
    )


def local_features(
    img: Image.Image, mirror: bool = True, n_features: int = N_FEATURES, max_side: int = MAX_SIDE
) -> LocalFeatures:
    """:class:`LocalFeatures` of a PIL image (any mode), with those of its mirror image if ``mirror``."""
    gray = working_gray(img, max_side)
    size = (gray.shape[1], gray.shape[0])
    points, desc = _sift(gray, n_features)
    mirrored = None
    if mirror:
        mpoints, mdesc = _sift(np.ascontiguousarray(gray[:, ::-1]), n_features)
        mirrored = LocalFeatures(mpoints, mdesc, size)
    return LocalFeatures(points, desc, size, mirrored)


def _cover_fraction(points: np.ndarray, size: tuple[int, int], q: float = 0.1) -> float:
    """Area of the box between the ``q`` and ``1 - q`` quantiles of the points' x and y, over the image's."""
    if len(points) < 3:
        return 0.0
    lo, hi = np.quantile(points, [q, 1.0 - q], axis=0)
    return float(min(1.0, (hi[0] - lo[0]) * (hi[1] - lo[1]) / (size[0] * size[1])))


def _match_one(a: LocalFeatures, b: LocalFeatures, ratio: float, reproj: float) -> tuple[int, int, float]:
    if len(a.points) < 3 or len(b.points) < 3:
        return 0, 0, 0.0
    da, db = a.descriptors.astype(np.float32), b.descriptors.astype(np.float32)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if len(good) < 4:
        return 0, len(good), 0.0
    src = a.points[[m.queryIdx for m in good]]
    dst = b.points[[m.trainIdx for m in good]]
    cv2.setRNGSeed(0)
    threshold = reproj * (b.size[0] + b.size[1]) / 2
    model, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                       maxIters=2000, confidence=0.995)  # fmt: skip
    if model is None or mask is None:
        return 0, len(good), 0.0
    keep = mask.ravel().astype(bool)
    spread = min(_cover_fraction(src[keep], a.size), _cover_fraction(dst[keep], b.size))
    return int(keep.sum()), len(good), spread


def match_features(
    a: LocalFeatures, b: LocalFeatures, ratio: float = RATIO, reproj: float = REPROJ
) -> GeometricMatch:
    """The better of a~b and a~mirror(b) (when b has mirrored features). ``reproj``: the RANSAC inlier
    distance as a fraction of b's mean side (0.015: about 6 px at 512 x 384)."""
    inliers, matches, spread = _match_one(a, b, ratio, reproj)
    best = GeometricMatch(inliers, matches, spread, False)
    if b.mirrored is not None:
        m_inliers, m_matches, m_spread = _match_one(a, b.mirrored, ratio, reproj)
        if m_inliers > inliers:
            best = GeometricMatch(m_inliers, m_matches, m_spread, True)
    return best


def verify_pair(img_a: Image.Image, img_b: Image.Image, **kwargs: float) -> GeometricMatch:
    """:func:`match_features` of two PIL images (features computed here; cache
    :func:`local_features` to verify many pairs of the same images)."""
    return match_features(local_features(img_a, mirror=False), local_features(img_b), **kwargs)


def is_copy(match: GeometricMatch, min_inliers: int = 20, min_spread: float = 0.04) -> bool:
    """Whether a match verifies a copy: enough inliers, spread over enough of the image."""
    return match.inliers >= min_inliers and match.spread >= min_spread


BLOCK_PAIRS = 4096  # pairs whose images' local features are held at once (about 140 kB per image)


def default_threads() -> int:
    """Threads for verification: the cores this process may use (OpenCV and PIL release the GIL: two
    threads verify 1.66x faster than one on 2 idle cores, benchmarks/results/geometric.md)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def measure_uri_pairs(
    pairs: list[tuple[str, str]], reader: Any, threads: int | None = None
) -> list[GeometricMatch | None]:
    """:func:`match_features` of each (uri a, uri b) pair (``b`` also as its mirror) read through
    ``reader`` (a ``data_catalog.uris.UriReader``), ``None`` where an image cannot be read now. Pairs
    go in blocks of :data:`BLOCK_PAIRS` sorted by uri, each block's local features computed once, on
    ``threads`` threads (default :func:`default_threads`), then dropped: memory stays bounded."""
    from concurrent.futures import ThreadPoolExecutor

    from data_catalog.image import open_image

    def load(key: tuple[str, bool]) -> LocalFeatures | None:
        try:
            return local_features(open_image(reader.read(key[0])), mirror=key[1])
        except Exception:  # noqa: BLE001 - unreadable now: it cannot verify
            return None

    out: list[GeometricMatch | None] = [None] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda n: pairs[n])
    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        for start in range(0, len(order), BLOCK_PAIRS):
            block = order[start : start + BLOCK_PAIRS]
            keys = list(dict.fromkeys(k for n in block for k in ((pairs[n][0], False), (pairs[n][1], True))))
            feats = dict(zip(keys, pool.map(load, keys), strict=True))

            def match(
                n: int, feats: dict[tuple[str, bool], LocalFeatures | None] = feats
            ) -> GeometricMatch | None:
                a, b = feats[pairs[n][0], False], feats[pairs[n][1], True]
                return match_features(a, b) if a is not None and b is not None else None

            for n, m in zip(block, pool.map(match, block), strict=True):
                out[n] = m
    return out


def verify_uri_pairs(
    pairs: list[tuple[str, str]],
    min_inliers: int = 20,
    min_spread: float = 0.04,
    ids: list[tuple[str, str]] | None = None,
    catalog: Any = None,
    run_id: str = "",
    threads: int | None = None,
) -> tuple[np.ndarray, list[GeometricMatch | None]]:
    """``(verified [P] bool, matches)`` of (uri a, uri b) pairs read through the one uri reader and image
    opener (:func:`measure_uri_pairs`). A pair with an image that cannot be read now is not verified
    (its match None).

    With ``ids`` (the pairs' image ids, sha256 of their bytes) and a ``catalog``, matches stored there
    under :data:`VERIFIER_ID` (``data_catalog.matches``) are reused, and the pairs verified here are
    stored, in one commit: a night verifies only pairs it has not seen."""
    from data_catalog.matches import StoredMatch, read_matches, write_matches
    from data_catalog.uris import UriReader

    matches: list[GeometricMatch | None] = [None] * len(pairs)
    todo = list(range(len(pairs)))
    keyed = ids is not None and catalog is not None
    if keyed:
        assert ids is not None and len(ids) == len(pairs)
        stored = read_matches(catalog, VERIFIER_ID, ids)
        todo = []
        for n, (a, b) in enumerate(ids):
            hit = stored.get((a, b) if a <= b else (b, a))
            if hit is None:
                todo.append(n)
            else:
                matches[n] = GeometricMatch(hit.inliers, hit.matches, hit.spread, hit.mirrored)
    new: dict[tuple[str, str], StoredMatch] = {}
    if todo:
        with UriReader(wanted=sorted({u for n in todo for u in pairs[n]})) as reader:
            measured = measure_uri_pairs([pairs[n] for n in todo], reader, threads)
        for n, match in zip(todo, measured, strict=True):
            matches[n] = match
            if keyed and match is not None:
                assert ids is not None
                new[ids[n]] = StoredMatch(match.inliers, match.matches, match.spread, match.mirrored)
    if new:
        write_matches(catalog, VERIFIER_ID, new, run_id)
    ok = np.array([m is not None and is_copy(m, min_inliers, min_spread) for m in matches], dtype=bool)
    return ok, matches
