"""Pieces of ``benchmarks.measure_semantic_dedup``: the stages' geometric verification of pool pairs,
the k-NN candidate pairs, the grid of verification settings (floors x inliers x spread), and leak
removal's rule over each copy's nearest benchmark images."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.copy_detection_parts import Pool, evaluate
from curation.config import SemanticDedupConfig
from curation.leaks import nearest_distinct
from data_catalog.image import open_image


class Verifier:
    """The stages' geometric verification (``curation.geometric``, ``GeometricVerifyConfig`` defaults)
    of pool items, local features computed once per item."""

    def __init__(self, pool: Pool) -> None:
        from curation.config import GeometricVerifyConfig

        self.pool, self.cfg, self.features = pool, GeometricVerifyConfig(), {}  # type: ignore[var-annotated]
        self.matches: dict[tuple[int, int], Any] = {}

    def _feats(self, n: int) -> Any:
        from curation.geometric import local_features

        if n not in self.features:
            self.features[n] = local_features(open_image(self.pool.items[n].data))
        return self.features[n]

    def measure(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inliers [P], spread [P]) of the pairs (a, b), b also matched as its mirror."""
        from curation.geometric import match_features

        ms = []
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            if (x, y) not in self.matches:
                self.matches[x, y] = match_features(self._feats(x), self._feats(y))
            ms.append(self.matches[x, y])
        return np.array([m.inliers for m in ms], np.int64), np.array([m.spread for m in ms], np.float64)

    def keep(
        self, a: np.ndarray, b: np.ndarray, score: np.ndarray, min_inliers: int | None = None,
        min_spread: float | None = None,
    ) -> np.ndarray:  # fmt: skip
        """[P] bool: pairs (a, b) at ``score`` that the stages keep: at or above ``verify_below``, or
        matching geometrically (b also as its mirror)."""
        out = score >= self.cfg.verify_below
        check = np.flatnonzero(~out)
        inliers, spread = self.measure(a[check], b[check])
        mi = self.cfg.min_inliers if min_inliers is None else min_inliers
        ms = self.cfg.min_spread if min_spread is None else min_spread
        out[check] = (inliers >= mi) & (spread >= ms)
        return out


GRID_FLOORS = (0.8, 0.85, 0.9, None)  # None: the cosine threshold itself
GRID_INLIERS = (15, 20)
GRID_SPREADS = (0.02, 0.03, 0.04, 0.05)


def verify_grid(
    pool: Pool, v: np.ndarray, score: np.ndarray, threshold: float, k: int, verifier: Verifier
) -> list[dict[str, Any]]:
    """Precision and recall of the stage's rule (k nearest from a floor, verified under verify_below)
    over floors x min_inliers x min_spread: every candidate measured once at the lowest floor."""
    verify_below = SemanticDedupConfig().verify_below
    near = knn_pairs(v, pool, k)
    low = min(f for f in GRID_FLOORS if f is not None)
    cand = np.flatnonzero(near & (score >= min(low, threshold)) & (score < verify_below))
    inliers, spread = verifier.measure(pool.i[cand], pool.j[cand])
    rows = []
    for floor in GRID_FLOORS:
        f = threshold if floor is None else floor
        for mi in GRID_INLIERS:
            for ms in GRID_SPREADS:
                pred = near & (score >= verify_below)
                ok = (score[cand] >= f) & (inliers >= mi) & (spread >= ms)
                pred[cand[ok]] = True
                r = evaluate(pool, score, pred)
                rows.append({"floor": f, "min_inliers": mi, "min_spread": ms,
                             "verified_per_image": float((score[cand] >= f).sum() / len(pool.items)),
                             "precision": r["precision"], "recall": r["recall"], "fp": r["fp"], "groups": r["groups"]})  # fmt: skip
    return rows


def knn_pairs(v: np.ndarray, pool: Pool, k: int) -> np.ndarray:
    """[P] bool over the pool's pairs: one image is among the other's ``k`` nearest (the stage's search)."""
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argpartition(-sim, k, axis=1)[:, :k]
    near = np.zeros(sim.shape, dtype=bool)
    near[np.repeat(np.arange(len(v)), k), nn.ravel()] = True
    near |= near.T
    return near[pool.i, pool.j]


LEAK_GRID_K = (4, 8)
LEAK_GRID_FLOORS = (0.7, 0.75, 0.8, 0.85, 0.9)


def leak_outcome(pred: np.ndarray, pos: np.ndarray, edits: np.ndarray) -> dict[str, Any]:
    """Precision of the predicted (copy, original) pairs, recall of copies with a true one, per edit."""
    from evaluation.copy_detection import GROUPS

    hit = (pred & pos).any(axis=1)
    groups = {
        g: float(hit[np.isin(edits, names)].mean())
        for g, names in GROUPS.items()
        if np.isin(edits, names).any()
    }
    return {"precision": int((pred & pos).sum()) / max(int(pred.sum()), 1), "recall": float(hit.mean()),
            "groups": groups, "edits": {e: float(hit[edits == e].mean()) for e in dict.fromkeys(edits)}}  # fmt: skip


def leak_rule(
    plain: np.ndarray, against_mirrors: np.ndarray, copies: np.ndarray, orig: np.ndarray, verifier: Verifier,
    k: int, floor: float,
) -> tuple[np.ndarray, int]:  # fmt: skip
    """(pred [C, O], pairs verified) of leak removal's rule (``curation.leaks.verified_matches``): each
    copy's ``k`` nearest of the originals' vectors and their mirrors' (``nearest_distinct``), from
    ``floor`` up, best first; the first at verify_below or matching geometrically is the leak."""
    entries = np.empty((plain.shape[0], 2 * plain.shape[1]), np.float32)
    entries[:, 0::2], entries[:, 1::2] = plain, against_mirrors
    top = np.argsort(-entries, axis=1, kind="stable")[:, :k]
    cand, csim = nearest_distinct(np.take_along_axis(entries, top, axis=1), top, mirror=True)
    pred = np.zeros(plain.shape, dtype=bool)
    open_rows, verified = np.ones(len(copies), dtype=bool), 0
    for j in range(cand.shape[1]):
        c, s = cand[:, j], csim[:, j]
        rows = np.flatnonzero(open_rows & (c >= 0) & (s >= floor))
        if rows.size == 0:
            break
        ok = verifier.keep(copies[rows], orig[c[rows]], s[rows])
        verified += int((s[rows] < verifier.cfg.verify_below).sum())
        pred[rows[ok], c[rows[ok]]] = True
        open_rows[rows[ok]] = False
    return pred, verified
