"""Pieces of ``benchmarks.measure_semantic_dedup``: the stages' geometric verification of pool pairs,
the k-NN candidate pairs, the grid of verification settings (floors x inliers x spread), and leak
removal's rule over each copy's nearest benchmark images."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.copy_detection_parts import Pool, evaluate
from curation.config import LeakConfig, SemanticDedupConfig
from curation.leaks import leak_floor, nearest_distinct
from data_catalog.image import open_image
from evaluation.copy_detection import operating_point


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


def leak_scores(
    pool: Pool, v: np.ndarray, vm: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(score [C, O] without mirror, with mirror (the better of the two), positive [C, O], score against
    the mirrored originals alone [C, O]): copies against originals."""
    orig = np.array([n for n, it in enumerate(pool.items) if it.edit == "original"])
    copies = np.array([n for n, it in enumerate(pool.items) if it.edit != "original"])
    plain = v[copies] @ v[orig].T
    against_mirrors = v[copies] @ vm.T
    src = np.array([it.source for it in pool.items])
    return (
        plain,
        np.maximum(plain, against_mirrors),
        src[copies][:, None] == src[orig][None, :],
        against_mirrors,
    )


def leak_section(out: dict[str, Any]) -> dict[str, Any]:
    """Leak removal on the edits pools (``out[tag]``: pool, leak scores, verifier): the threshold at
    precision 0.99 on calibration, cosine alone with and without mirrors, verified from the threshold up,
    the stage's default rule and the k x floor grid."""
    plain_c, mirr_c, pos_c, _ = out["calibration"]["leak"]
    tl = operating_point(mirr_c.ravel(), pos_c.ravel(), 0.99).threshold
    leak: dict[str, Any] = {"threshold": tl}
    for tag in ("calibration", "heldout"):
        plain, mirr, pos, against_mirrors = out[tag]["leak"]
        edits = np.array([it.edit for it in out[tag]["pool"].items if it.edit != "original"])
        pool, verifier = out[tag]["pool"], out[tag]["verifier"]
        orig = np.array([n for n, it in enumerate(pool.items) if it.edit == "original"])
        copies = np.array([n for n, it in enumerate(pool.items) if it.edit != "original"])
        c, o = np.nonzero(mirr >= tl)
        geo = np.zeros_like(mirr, dtype=bool)
        geo[c, o] = verifier.keep(copies[c], orig[o], mirr[c, o])
        for label, pred in (
            ("mirror", mirr >= tl),
            ("no_mirror", plain >= tl),
            ("mirror_geometric", geo & (mirr >= tl)),
        ):
            leak[f"{tag}_{label}"] = leak_outcome(pred, pos, edits)
        # the stage's rule: each copy's nearest benchmark vectors (originals and their mirrors), candidates
        # from a floor up tried best first, the first that matches (or one at verify_below) the leak
        leak_grid = []
        for k in LEAK_GRID_K:
            for floor in (*LEAK_GRID_FLOORS, tl):
                pred, verified = leak_rule(plain, against_mirrors, copies, orig, verifier, k, floor)
                leak_grid.append({"k": k, "floor": floor, "verified_per_copy": verified / len(copies),
                             **leak_outcome(pred, pos, edits)})  # fmt: skip
        leak[f"{tag}_grid"] = leak_grid
        stage = LeakConfig(threshold=tl)
        pred, verified = leak_rule(plain, against_mirrors, copies, orig, verifier, stage.k, leak_floor(stage))
        leak[f"{tag}_default"] = {"k": stage.k, "floor": leak_floor(stage),
                                  "verified_per_copy": verified / len(copies), **leak_outcome(pred, pos, edits)}  # fmt: skip
    return leak


def leak_rule_lines(lk: dict[str, Any]) -> list[str]:
    """The report's rows of leak removal's rule (``leak_rule``): the default, then the grid."""
    if "heldout_default" not in lk:
        return []
    names = list(lk["heldout_mirror"]["edits"])
    lines = []
    for tag in ("calibration", "heldout"):
        r = lk[f"{tag}_default"]
        lines.append(f"| {tag} | the stage's default: the {r['k']} nearest vectors (images and mirrors) from cosine "
                     f"{r['floor']:.2f}, best first, verified under 0.99 ({r['verified_per_copy']:.2f} pairs verified "
                     f"per copy) | {r['precision']:.4f} | {r['recall']:.3f} | "
                     + " | ".join(f"{r['edits'].get(n, 0.0):.3f}" for n in names) + " |")  # fmt: skip
    lines += ["", "Leak rule grid (choose on calibration; held-out never tuned on): each copy's k nearest benchmark "
              "vectors from the floor up, tried best first:", "",
              "| k | floor | verified per copy (held-out) | calibration P | calibration R | held-out P | held-out R | "
              "held-out easy | held-out hard |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for c, h in zip(lk["calibration_grid"], lk["heldout_grid"], strict=True):
        lines.append(f"| {c['k']} | {c['floor']:.4g} | {h['verified_per_copy']:.2f} | {c['precision']:.4f} | "
                     f"{c['recall']:.3f} | {h['precision']:.4f} | {h['recall']:.3f} | "
                     f"{h['groups'].get('easy', 0):.3f} | {h['groups'].get('hard', 0):.3f} |")  # fmt: skip
    return lines
