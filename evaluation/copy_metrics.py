"""Near-duplicate metrics over the pairs of a pool: precision/recall, operating points, micro-AP.

A pool of N images has N(N-1)/2 pairs ``(i, j)``, ``i < j`` (:func:`pair_indices`); a pair is positive
when both items share a source (:func:`positive_pairs`). A detector scores every pair (cosine similarity
of descriptors; ``64 - Hamming distance`` for pHash) and predicts the pairs scoring at least a threshold.

**micro-AP** (μAP) is the DISC21 measure (Douze et al. 2021, "The 2021 Image Similarity Dataset and
Challenge", arXiv:2106.09672, section 5; ``isc/metrics.py`` of facebookresearch/isc2021): all predictions
of all queries ranked together by score, ``μAP = sum_k (R_k - R_{k-1}) P_k`` with ``P_k``, ``R_k`` the
precision and recall of the first k predictions and recall counted against every ground-truth positive
(positives never predicted lower it). Predictions with equal scores are ranked negatives first, so ties
give the worst AP, as DISC21 does. Over all pairs of a pool, every pair is one (query, reference) prediction.
Without ties and with every positive predicted it equals ``sklearn.metrics.average_precision_score``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def pair_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)``, both [n(n-1)/2] int64, the upper triangle of an n x n matrix in row order."""
    return np.triu_indices(n, k=1)


def positive_pairs(sources: list[str] | np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Bool [P]: whether items ``i[p]`` and ``j[p]`` share a source."""
    codes = np.unique(np.asarray(sources), return_inverse=True)[1]
    return codes[i] == codes[j]


def pair_scores(sim: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Scores [P] of the pairs from a symmetric [N, N] similarity matrix."""
    return np.asarray(sim)[i, j]


def _checked(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    score, positive = np.asarray(score, dtype=np.float64).ravel(), np.asarray(positive, dtype=bool).ravel()
    if score.shape != positive.shape:
        raise ValueError(f"{score.size} scores but {positive.size} labels")
    if np.isnan(score).any():
        raise ValueError("scores hold NaN")
    return score, positive


@dataclass(frozen=True)
class Counts:
    """Pairs predicted at an operating point: true/false positives, missed positives."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        """tp / (tp + fp); 1.0 when nothing is predicted."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        """tp / (tp + fn); 1.0 when there is no positive."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def pair_counts(predicted: np.ndarray, positive: np.ndarray) -> Counts:
    """:class:`Counts` of a bool prediction [P] against bool labels [P]."""
    predicted, positive = np.asarray(predicted, dtype=bool), np.asarray(positive, dtype=bool)
    if predicted.shape != positive.shape:
        raise ValueError(f"{predicted.size} predictions but {positive.size} labels")
    tp = int((predicted & positive).sum())
    return Counts(tp=tp, fp=int(predicted.sum()) - tp, fn=int(positive.sum()) - tp)


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold (pairs scoring >= it are predicted) with its precision and recall."""

    threshold: float
    precision: float
    recall: float
    tp: int
    fp: int


def _ranked(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels sorted by decreasing score, negatives first among equal scores (DISC21)."""
    order = np.lexsort((positive, -score))
    return score[order], positive[order]


def operating_point(score: np.ndarray, positive: np.ndarray, min_precision: float = 0.99) -> OperatingPoint:
    """The threshold of highest recall whose precision is at least ``min_precision`` (DISC21's
    ``find_operating_point``: recall at a precision). Thresholds are the distinct scores (a threshold
    predicts every pair scoring at least it, so equal scores are never split); of equal recalls the
    highest threshold wins. When no threshold reaches the precision: ``inf``, nothing predicted."""
    score, positive = _checked(score, positive)
    s, y = _ranked(score, positive)
    ntp = np.cumsum(y)
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # end of each run of equal scores
    tp, n = ntp[last], last + 1
    ok = tp >= min_precision * n - 1e-9
    npos = max(int(positive.sum()), 1)
    if not ok.any():
        return OperatingPoint(float("inf"), 1.0, 0.0, 0, 0)
    k = np.flatnonzero(ok)[np.argmax(tp[ok])]
    return OperatingPoint(float(s[last[k]]), float(tp[k] / n[k]), float(tp[k] / npos), int(tp[k]),
                          int(n[k] - tp[k]))  # fmt: skip


def micro_average_precision(
    score: np.ndarray, positive: np.ndarray, num_positives: int | None = None
) -> float:
    """DISC21 μAP of predictions ``score`` [P] labelled ``positive`` [P] (see the module docstring).

    ``num_positives``: ground-truth positives, predicted or not (default: those among the predictions);
    fewer than the predicted positives is an error."""
    score, positive = _checked(score, positive)
    npos = int(positive.sum()) if num_positives is None else int(num_positives)
    if npos < int(positive.sum()):
        raise ValueError(f"num_positives {npos} < {int(positive.sum())} positive predictions")
    if npos == 0:
        return 0.0
    _, y = _ranked(score, positive)
    precision = np.cumsum(y) / np.arange(1, y.size + 1)
    return float(precision[y].sum() / npos)


def source_ranks(
    sim: np.ndarray, queries: np.ndarray, targets: np.ndarray, groups: np.ndarray | None = None
) -> np.ndarray:
    """For each query item q (index into the [N, N] similarity matrix) and its target t: how many other
    items (neither q nor t) score at least ``sim[q, t]`` against q. 0 means t is q's nearest neighbour;
    ties count against the target (as DISC21's ``find_tp_ranks``). ``groups`` [N]: items sharing q's
    group are not counted (other copies of the same photo are no distractors). Int [Q]."""
    sim = np.asarray(sim)
    rows = sim[queries].copy()  # [Q, N]
    q = np.arange(len(queries))
    own = rows[q, targets]
    rows[q, queries] = -np.inf
    rows[q, targets] = -np.inf
    if groups is not None:
        groups = np.asarray(groups)
        rows[groups[queries][:, None] == groups[None, :]] = -np.inf
    return (rows >= own[:, None]).sum(axis=1)
