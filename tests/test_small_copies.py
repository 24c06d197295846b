"""The small-image copy verifier: aligned high-pass correlation against a slow obvious version, and
planted copies (shifted, zoomed, mirrored, recoloured) found among distinct images."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

from curation.small_copies import (
    SCALES,
    SHIFT,
    WINDOW,
    aligned_scores,
    grey32,
    highpass,
    match_small,
    query_patches,
)


def textures(n: int, seed: int = 0) -> list[Image.Image]:
    """Distinct 32 px RGB images with structure at several scales (smoothed noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.uniform(0, 255, size=(8, 8, 3)).astype(np.uint8)
        img = Image.fromarray(coarse).resize((32, 32), Image.Resampling.BICUBIC)
        fine = np.asarray(img, dtype=np.float32) + rng.normal(0, 20, size=(32, 32, 3))
        out.append(Image.fromarray(np.clip(fine, 0, 255).astype(np.uint8)))
    return out


def slow_aligned(query_hp: np.ndarray, cand_hp: np.ndarray) -> float:
    """Every scale of the query's centre window against every shifted window, one at a time."""
    patches = query_patches(query_hp)
    best = -np.inf
    lo = (32 - WINDOW) // 2
    for dy in range(-SHIFT, SHIFT + 1):
        for dx in range(-SHIFT, SHIFT + 1):
            w = cand_hp[lo + dy : lo + dy + WINDOW, lo + dx : lo + dx + WINDOW].ravel().astype(np.float64)
            w = (w - w.mean()) / (np.linalg.norm(w - w.mean()) + 1e-6)
            for s in range(len(SCALES)):
                best = max(best, float(patches[s] @ w))
    return best


def test_aligned_scores_match_the_slow_version() -> None:
    hp = highpass(grey32(textures(6)))
    fast = aligned_scores(hp[0], hp[1:])
    slow = [slow_aligned(hp[0], c) for c in hp[1:]]
    np.testing.assert_allclose(fast, slow, atol=1e-4)


def test_a_shifted_copy_scores_near_one_a_different_image_does_not() -> None:
    imgs = textures(2, seed=1)
    shifted = imgs[0].crop((2, 1, 32, 31)).resize((32, 32), Image.Resampling.BICUBIC)
    hp = highpass(grey32([imgs[0], shifted, imgs[1]]))
    copy, other = aligned_scores(hp[0], hp[1:])
    assert copy > 0.85 > 0.5 > other


def test_match_small_finds_planted_edits_and_names_their_originals() -> None:
    pool = textures(300, seed=2)
    originals = textures(5, seed=3)
    edits = [
        originals[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT),  # found through the mirror query
        originals[1].crop((2, 2, 30, 30)).resize((32, 32), Image.Resampling.BICUBIC),  # zoom
        ImageEnhance.Brightness(originals[2]).enhance(1.3),
        originals[3].convert("L").convert("RGB"),
    ]
    planted = [37, 80, 150, 299]
    for row, img in zip(planted, edits, strict=True):
        pool[row] = img
    best, score = match_small(grey32(originals), grey32(pool), k=5)
    assert best[planted].tolist() == [0, 1, 2, 3]
    assert (score[planted] > 0.8).all()
    others = np.setdiff1d(np.arange(len(pool)), planted)
    assert (score[others] < 0.6).all()  # distinct images stay far below any threshold
    assert 4 not in best[score > 0.8]  # the original with no copy matches nothing


def test_empty_inputs() -> None:
    best, score = match_small(np.zeros((0, 32, 32), np.float32), grey32(textures(3)))
    assert best.tolist() == [-1, -1, -1] and np.isneginf(score).all()
