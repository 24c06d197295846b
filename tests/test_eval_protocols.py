"""kNN, linear probe and retrieval against direct scikit-learn / numpy computations on small data;
accuracy comes from the test split only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from evaluation.knn import knn_predict
from evaluation.linear import fit, holdout_split, linear_probe, torch_logreg_fit
from evaluation.retrieval import recall_at_k

GRID = [10.0**p for p in (-3, -2, -1, 0, 1)]


def blobs(
    n: int, d: int = 12, k: int = 4, spread: float = 1.6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes: neither protocol is perfect, so agreement means something."""
    centres = np.random.default_rng(1000 + d * 10 + k).normal(0, 1, (k, d))  # shared by train and test
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return centres[y] + spread * rng.normal(0, 1, (n, d)), y


def test_knn_agrees_with_sklearn_weighted_cosine_neighbours() -> None:
    xtr, ytr = blobs(200, seed=1)
    xte, yte = blobs(80, seed=2)
    t = 0.07
    for k in (1, 10, 20):
        ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                                   weights=lambda d: np.exp((1.0 - d) / t)).fit(xtr, ytr)  # fmt: skip
        ours = knn_predict(torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), k, t, num_classes=4)
        assert np.array_equal(ours.numpy(), ref.predict(xte)), k


def _reference_probe(xtr, ytr, xte, yte, grid, fraction, seed):  # type: ignore[no-untyped-def]
    """The protocol written out with plain scikit-learn calls (no warm start)."""
    order = np.random.default_rng(seed).permutation(len(xtr))
    n_hold = max(1, int(len(xtr) * fraction))
    hold, fit_i = np.sort(order[:n_hold]), np.sort(order[n_hold:])
    val = [
        (
            LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(xtr[fit_i], ytr[fit_i]).predict(xtr[hold])
            == ytr[hold]
        ).mean()
        for c in grid
    ]
    best = grid[int(np.argmax(val))]  # ties: the first, i.e. the smallest C
    final = LogisticRegression(C=best, max_iter=5000, tol=1e-10).fit(xtr, ytr)
    return best, final.predict(xte), float((final.predict(xte) == yte).mean())


@pytest.mark.parametrize("backend", ["sklearn", "torch"])
def test_linear_probe_matches_direct_sklearn_protocol(backend: str) -> None:
    xtr, ytr = blobs(300, seed=3)
    xte, yte = blobs(120, seed=4)
    best, pred, acc = _reference_probe(xtr, ytr, xte, yte, GRID, 0.2, 0)
    res = linear_probe(xtr, ytr, xte, yte, GRID, holdout_fraction=0.2, seed=0, backend=backend, tol=1e-10,
                       max_iter=5000, search="grid")  # fmt: skip
    assert res.c == best
    assert (res.predictions == pred).mean() >= 0.99
    assert res.top1 == pytest.approx(acc, abs=0.01)
    assert 0.3 < res.top1 < 0.99  # neither chance nor trivially separable


def test_torch_and_sklearn_solve_the_same_problem() -> None:
    x, y = blobs(250, d=8, k=3, seed=5)
    for c in (0.01, 1.0, 100.0):
        ref = LogisticRegression(C=c, max_iter=10000, tol=1e-12).fit(x, y)
        w, b = torch_logreg_fit(torch.tensor(x), torch.tensor(y), c, 3, max_iter=5000, tol=1e-12)
        probs = torch.softmax(torch.tensor(x) @ w.T + b, 1).numpy()
        assert np.abs(probs - ref.predict_proba(x)).max() < 1e-4, c


def test_binary_problem_agrees_between_backends() -> None:
    x, y = blobs(200, d=6, k=2, seed=6)
    ref = LogisticRegression(C=0.5, max_iter=5000, tol=1e-12).fit(x, y)
    for backend in ("sklearn", "torch"):
        model = fit(x, y, 0.5, backend, max_iter=5000, tol=1e-12)
        z = model.decision(x)
        assert np.abs((z[:, 1] - z[:, 0]) - ref.decision_function(x)).max() < 1e-3, backend


def test_accuracy_comes_from_the_test_split_only() -> None:
    """Scrambled test labels change the accuracy and nothing else: C and predictions stay put."""
    xtr, ytr = blobs(300, seed=7)
    xte, yte = blobs(120, seed=8)
    scrambled = np.random.default_rng(0).permutation(yte)
    a = linear_probe(xtr, ytr, xte, yte, GRID, backend="sklearn")
    b = linear_probe(xtr, ytr, xte, scrambled, GRID, backend="sklearn")
    assert a.c == b.c and a.val_top1 == b.val_top1 and np.array_equal(a.predictions, b.predictions)
    assert a.top1 == pytest.approx((a.predictions == yte).mean())
    assert b.top1 == pytest.approx((b.predictions == scrambled).mean())
    # and the train split alone decides C: the hold-out indices lie inside it
    fit_i, hold_i = holdout_split(300, 0.1, 0)
    assert len(hold_i) == 30 and not set(fit_i) & set(hold_i) and max(fit_i.max(), hold_i.max()) < 300


def test_recall_at_k_matches_brute_force() -> None:
    gal, gy = blobs(150, seed=9)
    q, qy = blobs(40, seed=10)
    got = recall_at_k(q, qy, gal, gy, ks=(1, 5), use_gpu=False)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = gal / np.linalg.norm(gal, axis=1, keepdims=True)
    order = np.argsort(-(qn @ gn.T), axis=1)
    for k in (1, 5):
        expected = np.mean([(gy[order[i, :k]] == qy[i]).any() for i in range(len(q))])
        assert got[k] == pytest.approx(expected)


def test_bad_probe_input_is_a_clear_error() -> None:
    x, y = blobs(20)
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe(x, np.zeros(20, dtype=int), x, y, GRID)
    with pytest.raises(ValueError, match=">= 1 test"):
        linear_probe(x, y, x[:0], y[:0], GRID)


def test_coarse_to_fine_finds_the_peak_of_a_unimodal_curve_in_18_fits() -> None:
    from evaluation.linear import choose_c

    grid = [10.0 ** (-6 + 11 * i / 44) for i in range(45)]
    for peak in (0, 7, 22, 41, 44):
        fitted: list[float] = []

        def fit_one(c: float, init: object, fitted: list[float] = fitted) -> float:
            fitted.append(c)
            return c

        def score(c: float, peak: int = peak) -> float:
            return -abs(grid.index(c) - peak)

        best, val, _ = choose_c(fit_one, score, grid, "coarse_to_fine")
        assert best == peak and len(fitted) <= 18
        coarse = [c for c in fitted if grid.index(c) % 4 == 0 or c == grid[-1]]
        assert coarse == sorted(coarse)  # the coarse pass ascends (warm starts)
        if peak == 0:  # two coarse C's below the best stop the ascent: 3 coarse + 3 fine fits
            assert len(fitted) == 6
        assert choose_c(fit_one, score, grid, "grid")[0] == peak


def test_sweep_warm_starts_from_the_nearest_smaller_c() -> None:
    from evaluation.linear import choose_c

    grid = [0.1, 1.0, 10.0, 100.0, 1000.0, 1e4]
    inits: dict[float, object] = {}

    def fit_one(c: float, init: object) -> float:
        inits[c] = init
        return c

    choose_c(fit_one, lambda c: -abs(c - 100.0), grid, "coarse_to_fine")
    assert inits[0.1] is None and inits[1e4] == 1000.0 and inits[100.0] == 10.0
