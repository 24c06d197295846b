"""The copy-detection protocol of an evaluation: planted edited copies of real photos, DISC21 μAP.

A pool is ``cfg.max_photos`` photos of one split of ``cfg.photos`` (``evaluation.copy_detection``:
the held-out split by default, never tuned on), each followed by its copies under ``cfg.edits``
(exact, easy, hard and extra edits; deterministic). Every subject embeds every pool image; all pairs
are scored by cosine; a pair is positive when both images come from one photo. Reported per subject:

- ``muap``: DISC21's micro-average precision over all pairs (Douze et al. 2021, arXiv:2106.09672);
- ``recall_at_p``: the best recall over all pairs where precision is at least ``cfg.min_precision``,
  and per edit group the recall of a copy against its original at that cosine. The threshold is the
  pool's own (an oracle: it says how separable the pool is, not what a fixed default gets; the
  calibrated default is measured by ``benchmarks/measure_copy_detection.py``);
- ``top1``: per edit group, the fraction of copies whose nearest image of another photo scores
  below their original (their original is their nearest neighbour).

Subjects: the evaluated backbone and its baselines (random init, raw pixels, the start checkpoint)
by the L2-normalised class token of the square-resized image, and the copy-detection descriptor
(``pretrain.models.descriptors.load_descriptor``) when one is configured or shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data_catalog.image import open_image
from evaluation.config import REPO, CopyDetectionConfig, expand_path
from evaluation.copy_detection import (
    EDITS,
    GROUPS,
    PoolItem,
    generated_pool,
    micro_average_precision,
    operating_point,
    pair_indices,
    pair_scores,
    positive_pairs,
    source_ranks,
    split_photos,
)
from pretrain.models.descriptors import Descriptor, backbone_descriptor, load_descriptor

SHIPPED_DESCRIPTOR = REPO / "assets" / "copy-descriptor"
Embedder = Callable[[list[PoolItem]], np.ndarray]


def copy_pool(cfg: CopyDetectionConfig) -> list[PoolItem]:
    """The pool: originals of ``cfg.split`` (first ``cfg.max_photos`` by name) and their copies."""
    root = cfg.photos_dir()
    if root is None or not root.is_dir():
        raise ValueError(f"evaluate.copy_detection.photos: folder {root or cfg.photos} not found")
    files = sorted(p for p in root.iterdir() if p.is_file())
    photos = files if cfg.split == "all" else split_photos(files)[cfg.split]
    pool = generated_pool(photos[: cfg.max_photos], cfg.edits)
    if not pool:
        raise ValueError(f"copy detection: no decodable photos in {root} ({cfg.split} split)")
    return pool


def descriptor_embedder(desc: Descriptor, batch: int = 64) -> Embedder:
    """Vectors [N, D] of pool items by ``desc`` (opened by the one image opener, square-resized)."""

    def embed(items: list[PoolItem]) -> np.ndarray:
        out = []
        for s in range(0, len(items), batch):
            x = torch.stack([desc.preprocess(open_image(it.data)) for it in items[s : s + batch]])
            out.append(desc(x).numpy())
        return np.concatenate(out)

    return embed


def pixel_embedder(size: int, desc_size: int = 64) -> Embedder:
    """Raw pixels: the ImageNet-normalised image resized to ``desc_size``, area-pooled to ``size``,
    flattened and L2-normalised (the evaluation's raw-pixel baseline, as a copy descriptor)."""
    ident = Descriptor("raw-pixels", "pixels", desc_size, 3 * size * size, torch.nn.Identity())

    def embed(items: list[PoolItem]) -> np.ndarray:
        x = torch.stack([ident.preprocess(open_image(it.data)) for it in items])
        return F.normalize(F.adaptive_avg_pool2d(x, size).flatten(1), dim=1).numpy()

    return embed


def pool_metrics(vectors: np.ndarray, pool: list[PoolItem], min_precision: float) -> dict[str, Any]:
    """``muap``, ``recall_at_p`` and ``top1`` of one subject's vectors [N, D] (module docstring)."""
    sim = vectors @ vectors.T
    i, j = pair_indices(len(pool))
    sources = np.array([it.source for it in pool])
    positive = positive_pairs(sources, i, j)
    score = pair_scores(sim, i, j)
    op = operating_point(score, positive, min_precision)
    originals = {it.source: n for n, it in enumerate(pool) if it.edit == "original"}
    copies = np.array([n for n, it in enumerate(pool) if it.edit != "original"])
    targets = np.array([originals[pool[c].source] for c in copies])
    ranks = source_ranks(sim, copies, targets, sources)
    own = sim[copies, targets]
    groups = np.array([EDITS[pool[c].edit].group for c in copies])
    by_group = {g: groups == g for g in GROUPS if (groups == g).any()}
    return {
        "muap": micro_average_precision(score, positive),
        "recall_at_p": {
            "min_precision": min_precision,
            "threshold": op.threshold,
            "precision": op.precision,
            "recall": op.recall,
            **{g: float((own[m] >= op.threshold).mean()) for g, m in by_group.items()},
        },  # fmt: skip
        "top1": {g: float((ranks[m] == 0).mean()) for g, m in by_group.items()},
    }


def copy_descriptor_path(cfg: CopyDetectionConfig) -> Path | None:
    """The configured descriptor (must exist), else the shipped one when present, else None."""
    if cfg.descriptor is not None:
        path = Path(expand_path(cfg.descriptor))
        if not path.exists():
            raise ValueError(f"evaluate.copy_detection.descriptor: {path} not found")
        return path
    return SHIPPED_DESCRIPTOR if SHIPPED_DESCRIPTOR.exists() else None


def subject_embedder(model: torch.nn.Module | None, info: dict[str, Any], key: str) -> Embedder:
    """A backbone subject's class token (at its own input size), or the raw-pixel baseline."""
    if model is None:
        return pixel_embedder(int(info["size"]))
    return descriptor_embedder(backbone_descriptor(model, key[:12]))


def run_copy_detection(
    subjects: list[Any], cfg: CopyDetectionConfig, device: str = "cpu"
) -> dict[str, dict[str, Any]]:
    """``{subject name: metrics}`` for each of ``subjects`` (``evaluation.checkpoints.Subject``) and
    ``copy_descriptor`` (when one is found); ``pool`` describes the pool."""
    pool = copy_pool(cfg)
    out: dict[str, dict[str, Any]] = {}
    for s in subjects:
        if s.model is not None:
            s.model.to(device)
        out[s.name] = pool_metrics(subject_embedder(s.model, s.info, s.key)(pool), pool, cfg.min_precision)
    path = copy_descriptor_path(cfg)
    if path is not None:
        desc = load_descriptor(path).to(device)
        out["copy_descriptor"] = {"model_id": desc.model_id, "path": str(path),
                                  **pool_metrics(descriptor_embedder(desc)(pool), pool, cfg.min_precision)}  # fmt: skip
    photos = sum(it.edit == "original" for it in pool)
    out["pool"] = {"photos": photos, "images": len(pool), "split": cfg.split, "edits": list(cfg.edits)}
    return out
