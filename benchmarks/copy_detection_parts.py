"""Pieces of ``benchmarks.measure_copy_detection``: a scored pool, pHash on its pairs, geometric
verification of candidate pairs, random-init twins of descriptors, throughput."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from benchmarks.measure_phash_radius import pipeline_phash
from curation.binary_index import hamming, hex_to_uint64
from curation.geometric import GeometricMatch, LocalFeatures, local_features, match_features
from data_catalog.image import open_image
from evaluation.copy_detection import (
    EDITS,
    GROUPS,
    UKBENCH_GROUPS,
    PoolItem,
    micro_average_precision,
    pair_counts,
    pair_indices,
    pair_type,
    positive_pairs,
    source_ranks,
)
from pretrain.models.descriptors import Descriptor, backbone_descriptor
from pretrain.models.vit import DinoVisionTransformer


class Pool:
    """The images of one pool, all their pairs ``(i, j)`` with labels, the edit each positive pair tests
    (``pos_types``), and caches of decoded local features and geometric matches (shared by every
    descriptor measured on the pool)."""

    def __init__(self, items: list[PoolItem], generated: bool) -> None:
        self.items, self.generated = items, generated
        self.groups = GROUPS if generated else UKBENCH_GROUPS
        self.i, self.j = pair_indices(len(items))
        self.positive = positive_pairs([it.source for it in items], self.i, self.j)
        self.pos_index = np.flatnonzero(self.positive)
        edits = [it.edit for it in items]
        self.pos_types = np.array([pair_type(edits[a], edits[b]) for a, b in
                                   zip(self.i[self.pos_index], self.j[self.pos_index], strict=True)])  # fmt: skip
        seen = list(dict.fromkeys(self.pos_types.tolist()))
        singles = set(edits) | {"exact"}  # pair types of one copy with an original (not copy~copy)
        self.edit_names = [e for e in EDITS if e in seen] + sorted(e for e in seen if e not in EDITS)
        self.single_edits = [e for e in self.edit_names if e in singles]
        self._features: dict[int, LocalFeatures] = {}
        self._matches: dict[tuple[int, int], GeometricMatch] = {}

    def embed(self, desc: Descriptor, batch: int = 64) -> np.ndarray:
        """Descriptors [N, D] of every image (opened by ``data_catalog.image.open_image``)."""
        out = []
        for s in range(0, len(self.items), batch):
            x = torch.stack([desc.preprocess(open_image(it.data)) for it in self.items[s : s + batch]])
            out.append(desc(x).numpy())
        return np.concatenate(out)

    def original_ranks(self, sim: np.ndarray, ks: tuple[int, ...]) -> dict[str, dict[str, float]]:
        """Per edit group: the fraction of copies whose original is among their k nearest images."""
        index = {it.source: n for n, it in enumerate(self.items) if it.edit == "original"}
        copies = np.array([n for n, it in enumerate(self.items) if it.edit != "original"])
        targets = np.array([index[self.items[c].source] for c in copies])
        sources = np.array([it.source for it in self.items])
        ranks = source_ranks(sim, copies, targets, sources)  # among images of other photos
        groups = np.array([EDITS[self.items[c].edit].group for c in copies])
        return {g: {str(k): float((ranks[groups == g] < k).mean()) for k in ks}
                for g in GROUPS if (groups == g).any()}  # fmt: skip

    def match(self, a: int, b: int) -> GeometricMatch:
        for k in (a, b):
            if k not in self._features:
                self._features[k] = local_features(open_image(self.items[k].data))
        if (a, b) not in self._matches:
            self._matches[(a, b)] = match_features(self._features[a], self._features[b])
        return self._matches[(a, b)]


def evaluate(pool: Pool, score: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Precision, recall (all positive pairs, per group, per edit) and μAP of one detector on a pool."""
    counts = pair_counts(predicted, pool.positive)
    hit = predicted[pool.pos_index]
    per_type = {t: float(hit[pool.pos_types == t].mean()) for t in pool.edit_names}
    groups = {g: float(hit[np.isin(pool.pos_types, names)].mean()) for g, names in pool.groups.items()
              if np.isin(pool.pos_types, names).any()}  # fmt: skip
    return {
        "precision": counts.precision, "recall": counts.recall, "tp": counts.tp, "fp": counts.fp,
        "fn": counts.fn, "groups": groups, "edits": per_type,
        "micro_ap": micro_average_precision(score, pool.positive),
    }  # fmt: skip


def phash_scores(pool: Pool) -> np.ndarray:
    """``64 - Hamming distance`` of every pair's pipeline pHashes; -1 where ingest rejects an image."""
    values, valid = hex_to_uint64([pipeline_phash(it.data) for it in pool.items])
    score = 64 - hamming(values[pool.i], values[pool.j])
    return np.where(valid[pool.i] & valid[pool.j], score, -1)


# ----------------------------------------------------------------------------- geometric verification
INLIER_GRID = (10, 15, 20, 30, 40, 60)
SPREAD_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)


def _matches(pool: Pool, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ms = [pool.match(int(pool.i[c]), int(pool.j[c])) for c in cand]
    return np.array([m.inliers for m in ms], dtype=np.int64), np.array([m.spread for m in ms])


def _combined(
    score: np.ndarray, threshold: float, cand: np.ndarray, verified: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted = above the descriptor's threshold, or a verified candidate; the ranking score puts
    verified candidates above every other pair (for μAP)."""
    predicted = score >= threshold
    predicted[cand[verified]] = True
    ranked = score.astype(np.float64).copy()
    ranked[cand[verified]] += 4.0
    return ranked, predicted


def geometric_rows(
    row: dict[str, Any], pools: dict[str, Pool], per_image: float, target: float
) -> dict[str, Any]:
    """Descriptor + geometric verification (see the benchmark's docstring), calibrated on calibration."""
    t0 = time.perf_counter()
    scores, threshold = row["_scores"], row["threshold"]
    calib, cs = pools["calibration"], scores["calibration"]
    budget = min(len(cs), int(per_image * len(calib.items)))
    loose = min(threshold, float(np.partition(cs, len(cs) - budget)[len(cs) - budget]))
    cand = {name: np.flatnonzero(scores[name] >= loose) for name in pools}
    feats = {name: _matches(pools[name], cand[name]) for name in pools}
    best: tuple[float, int, float] | None = None
    inl, spr = feats["calibration"]
    for mi in INLIER_GRID:
        for ms in SPREAD_GRID:
            _, pred = _combined(cs, threshold, cand["calibration"], (inl >= mi) & (spr >= ms))
            c = pair_counts(pred, calib.positive)
            if c.precision >= target and (best is None or c.recall > best[0]):
                best = (c.recall, mi, ms)
    mi, ms = (best[1], best[2]) if best else (10**9, 1.0)  # nothing verifies at the target: none kept
    out: dict[str, Any] = {"model_id": row["model_id"] + " + geometric", "threshold": threshold, "pools": {},
                           "loose_threshold": loose, "min_inliers": mi, "min_spread": ms}  # fmt: skip
    for name, pool in pools.items():
        inl, spr = feats[name]
        ranked, pred = _combined(scores[name], threshold, cand[name], (inl >= mi) & (spr >= ms))
        res = evaluate(pool, ranked, pred)
        res["candidates"] = len(cand[name])
        res["candidate_recall"] = float(pool.positive[cand[name]].sum() / max(int(pool.positive.sum()), 1))
        out["pools"][name] = res
    out["seconds"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------- baselines and cost
def random_like(desc: Descriptor, seed: int = 0) -> Descriptor:
    """The same architecture as ``desc``, freshly initialised (``torch.manual_seed(seed)``), untrained."""
    torch.manual_seed(seed)
    if desc.kind == "dinoflow-backbone":
        vit = DinoVisionTransformer(**desc.module.arch_kwargs)  # type: ignore[arg-type]
        return backbone_descriptor(vit, f"random-seed{seed}", desc.input_size)
    if desc.kind == "dinoflow-sscd":
        from pretrain.models.descriptor import CopyDescriptor

        arch = desc.module.arch()  # type: ignore[operator]
        model = CopyDescriptor(DinoVisionTransformer(**arch["backbone"]), arch["dim"], arch["pooling"],
                               arch["gem_p"], arch["input_size"]).eval()  # fmt: skip
        model_id = desc.model_id.split("@")[0] + f"@random-seed{seed}"
        return Descriptor(model_id, desc.kind, desc.input_size, desc.dim, model)
    raise ValueError(f"no random init for a {desc.kind} descriptor")


def _best_of(fn: Any, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def throughput(descs: list[tuple[str, Descriptor]], pool: Pool, n: int = 128, rounds: int = 10) -> str:
    """Markdown: images/s on one thread of each descriptor, of its bare backbone forward pass (the
    ViT's class token, no pooling or projection) on the same preprocessed batch, and of decode + resize."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lines = ["| descriptor | input | descriptor img/s | backbone forward img/s | ratio | decode + resize img/s |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    try:
        items = pool.items[:n]
        n = len(items)
        for label, desc in descs:
            prep = _best_of(lambda d=desc: [d.preprocess(open_image(it.data)) for it in items], 2)
            x = torch.stack([desc.preprocess(open_image(it.data)) for it in items])
            backbone = getattr(
                desc.module, "backbone", desc.module if desc.kind == "dinoflow-backbone" else None
            )
            t_desc, t_bb = float("inf"), float("inf")
            with torch.inference_mode():
                for _ in range(rounds):
                    t_desc = min(t_desc, _best_of(lambda d=desc, x=x: d(x), 1))
                    if backbone is not None:
                        t_bb = min(t_bb, _best_of(lambda b=backbone, x=x: b(x), 1))
            bb = f"{n / t_bb:.0f}" if backbone is not None else "-"
            ratio = f"{t_bb / t_desc:.2f}" if backbone is not None else "-"
            lines.append(
                f"| {label} | {desc.input_size} px | {n / t_desc:.0f} | {bb} | {ratio} | {n / prep:.0f} |"
            )
    finally:
        torch.set_num_threads(threads)
    return "\n".join(lines)
