"""Copy-detection metrics against slow obvious computations and scikit-learn (evaluation/copy_metrics.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from evaluation.copy_detection import (
    micro_average_precision,
    operating_point,
    pair_counts,
    pair_indices,
    pair_scores,
    positive_pairs,
    source_ranks,
)


def slow_micro_ap(scores: list[float], labels: list[bool], num_positives: int | None = None) -> float:
    """DISC21 by hand: rank by score (negatives first among ties), average the precision at each
    positive over all ground-truth positives."""
    ranked = sorted(zip(scores, labels, strict=True), key=lambda t: (-t[0], t[1]))
    npos = sum(labels) if num_positives is None else num_positives
    hits, total = 0, 0.0
    for k, (_, y) in enumerate(ranked, 1):
        if y:
            hits += 1
            total += hits / k
    return total / npos if npos else 0.0


def test_micro_ap_hand_made_cases() -> None:
    # ranks: T F T -> precisions 1 and 2/3 at the positives
    assert micro_average_precision([0.9, 0.8, 0.7], [True, False, True]) == pytest.approx((1 + 2 / 3) / 2)
    # a positive never predicted halves the AP
    assert micro_average_precision([0.9], [True], num_positives=2) == pytest.approx(0.5)
    # ties rank negatives first: F T T -> (1/2 + 2/3) / 2, where scikit-learn groups ties (2/3)
    scores, labels = [0.5, 0.5, 0.5], [True, True, False]
    assert micro_average_precision(scores, labels) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert average_precision_score(labels, scores) == pytest.approx(2 / 3)
    assert micro_average_precision([0.3, 0.2], [False, False]) == 0.0
    with pytest.raises(ValueError, match="num_positives 1 < 2"):
        micro_average_precision([0.3, 0.2], [True, True], num_positives=1)
    with pytest.raises(ValueError, match="NaN"):
        micro_average_precision([np.nan], [True])


@pytest.mark.parametrize("seed", range(20))
def test_micro_ap_equals_slow_version_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    scores = rng.integers(0, 6, n) / 5  # few distinct values: many ties
    labels = rng.random(n) < 0.4
    extra = int(rng.integers(0, 3))
    got = micro_average_precision(scores, labels, int(labels.sum()) + extra)
    assert got == pytest.approx(slow_micro_ap(scores.tolist(), labels.tolist(), int(labels.sum()) + extra))


@pytest.mark.parametrize("seed", range(10))
def test_micro_ap_equals_sklearn_without_ties(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    scores = rng.random(200)
    labels = rng.random(200) < 0.1 + 0.05 * seed
    assert micro_average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores))


def slow_operating_point(
    scores: list[float], labels: list[bool], target: float
) -> tuple[float, float, float]:
    """Every distinct score as a threshold; the highest recall with precision >= target."""
    best = (float("inf"), 1.0, 0.0)
    for t in sorted(set(scores), reverse=True):
        pred = [s >= t for s in scores]
        tp = sum(p and y for p, y in zip(pred, labels, strict=True))
        prec, rec = tp / sum(pred), tp / max(sum(labels), 1)
        if prec >= target and rec > best[2]:
            best = (t, prec, rec)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_operating_point_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    n = 60
    labels = rng.random(n) < 0.3
    scores = np.round(np.where(labels, rng.normal(1.0, 0.6, n), rng.normal(0, 0.6, n)), 1)
    for target in (0.5, 0.9, 0.99):
        op = operating_point(scores, labels, target)
        t, p, r = slow_operating_point(scores.tolist(), labels.tolist(), target)
        assert (op.threshold, op.precision, op.recall) == pytest.approx((t, p, r))
        if np.isfinite(op.threshold):
            counts = pair_counts(scores >= op.threshold, labels)
            assert (counts.tp, counts.fp) == (op.tp, op.fp)
            assert counts.precision >= target


def test_operating_point_never_splits_tied_scores() -> None:
    # at 0.8 a positive and a negative tie: precision 0.99 needs the threshold above them
    op = operating_point([0.9, 0.8, 0.8, 0.1], [True, True, False, True], 0.99)
    assert (op.threshold, op.recall, op.tp, op.fp) == (0.9, pytest.approx(1 / 3), 1, 0)
    nothing = operating_point([0.5, 0.4], [False, True], 0.99)
    assert nothing.threshold == float("inf") and nothing.recall == 0.0


def test_pair_counts_precision_and_recall() -> None:
    pred = np.array([True, True, False, False, True])
    pos = np.array([True, False, True, False, True])
    c = pair_counts(pred, pos)
    assert (c.tp, c.fp, c.fn) == (2, 1, 1)
    assert (c.precision, c.recall) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert pair_counts(np.zeros(3, bool), np.zeros(3, bool)).precision == 1.0


def test_pool_pairs_and_positives_match_a_double_loop() -> None:
    sources = ["a", "b", "a", "c", "b", "a"]
    i, j = pair_indices(len(sources))
    pos = positive_pairs(sources, i, j)
    expected = [(p, q) for p, q in itertools.combinations(range(6), 2) if sources[p] == sources[q]]
    assert [(int(p), int(q)) for p, q in zip(i[pos], j[pos], strict=True)] == expected
    assert len(i) == 15
    sim = np.arange(36, dtype=float).reshape(6, 6)
    sim = sim + sim.T
    assert pair_scores(sim, i, j).tolist() == [sim[p, q] for p, q in itertools.combinations(range(6), 2)]


def test_source_ranks_equal_counting_by_hand() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    queries, targets = np.array([1, 5, 9, 3]), np.array([0, 2, 9 - 1, 11])
    ranks = source_ranks(sim, queries, targets)
    for q, t, r in zip(queries, targets, ranks, strict=True):
        others = [k for k in range(12) if k not in (q, t)]
        assert r == sum(sim[q, k] >= sim[q, t] for k in others)
    # a duplicate of the target (a tie) counts against it
    sim2 = np.array([[1.0, 0.5, 0.5], [0.5, 1.0, 0.2], [0.5, 0.2, 1.0]])
    assert source_ranks(sim2, np.array([0]), np.array([1])).tolist() == [1]
    # unless the tie is in the query's own group (another copy of the same photo)
    groups = np.array(["a", "a", "a"])
    assert source_ranks(sim2, np.array([0]), np.array([1]), groups).tolist() == [0]
    groups = np.arange(12) // 3
    ranks = source_ranks(sim, queries, targets, groups)
    for q, t, r in zip(queries, targets, ranks, strict=True):
        others = [k for k in range(12) if k not in (q, t) and groups[k] != groups[q]]
        assert r == sum(sim[q, k] >= sim[q, t] for k in others)
