"""Linear probe: multinomial logistic regression on frozen features (DINOv2, Oquab et al. 2023, sec. 7).

Protocol (the paper's and ``dinov2/eval/log_regression.py``'s): a random ``holdout_fraction`` (10%)
of the TRAIN split chooses C among ``10 ** linspace(-6, 5, 45)``; the model is then refit on the
whole train split with that C and scored on the test split, which nothing before has seen. The
solvers (scikit-learn's lbfgs, or the same objective in torch) are in :mod:`evaluation.logreg`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evaluation.logreg import LinearModel, fit, make_problem, torch_logreg_fit

__all__ = [
    "LinearModel",
    "LinearResult",
    "choose_c",
    "fit",
    "holdout_split",
    "linear_probe",
    "torch_logreg_fit",
]


@dataclass
class LinearResult:
    top1: float  # accuracy on the test split, 0..1
    c: float  # the C chosen on the hold-out
    val_top1: dict[float, float]  # hold-out accuracy per C of the sweep
    predictions: np.ndarray  # [M] predicted test labels
    backend: str
    extra: dict[str, Any] = field(default_factory=dict)


def choose_backend(backend: str, n: int, d: int, device: str) -> str:
    """``auto``: torch on a GPU or above 2M feature values (N x D); scikit-learn otherwise."""
    if backend != "auto":
        return backend
    return "torch" if torch.device(device).type != "cpu" or n * d > 2_000_000 else "sklearn"


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit_index, holdout_index)``: a seeded random ``fraction`` of 0..n-1 held out (at least 1)."""
    order = np.random.default_rng(seed).permutation(n)
    n_hold = min(n - 1, max(1, int(n * fraction)))
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def sweep_order(n: int, search: str, stride: int = 4) -> tuple[list[int], int]:
    """Grid indices of the coarse pass (every ``stride``-th, and the last) and the stride; ``grid``
    search is a coarse pass with stride 1."""
    if search not in ("grid", "coarse_to_fine"):
        raise ValueError(f"unknown C search {search!r}; valid: grid, coarse_to_fine")
    step = 1 if search == "grid" else stride
    coarse = list(range(0, n, step))
    if coarse[-1] != n - 1:
        coarse.append(n - 1)
    return coarse, step


def choose_c(
    fit_one: Any, score: Any, grid: list[float], search: str = "coarse_to_fine"
) -> tuple[int, dict[int, float], dict[int, LinearModel]]:
    """``(best index, hold-out accuracy per evaluated index, models)`` over the ascending ``grid``.

    ``grid``: every C (the paper's 45 fits). ``coarse_to_fine``: every 4th C, ascending, stopping
    once two in a row score below the best so far (hold-out accuracy is unimodal in log C up to
    noise: past the peak the probe only overfits, and the large-C fits are the slow ones), then
    every C within 3 steps of the best (at most 18 fits of 45). Each fit is warm started from the
    nearest smaller C already fitted. Ties go to the smaller C (the more regularised model).
    """
    coarse, step = sweep_order(len(grid), search)
    models: dict[int, LinearModel] = {}
    val: dict[int, float] = {}

    def visit(i: int) -> None:
        below = [j for j in models if j < i]
        models[i] = fit_one(grid[i], models[max(below)] if below else None)
        val[i] = score(models[i])

    worse = 0
    for i in coarse:
        visit(i)
        worse = worse + 1 if val[i] < max(val.values()) else 0
        if step > 1 and worse == 2:
            break
    best = max(val, key=lambda i: (val[i], -i))
    for i in range(max(0, best - step + 1), min(len(grid), best + step)):
        if i not in val:
            visit(i)
    return max(val, key=lambda i: (val[i], -i)), val, models


def _sweep(problem: Any, x_hold: np.ndarray, y_hold: np.ndarray, grid: list[float], search: str,
           max_iter: int, tol: float) -> tuple[int, dict[int, float], dict[int, LinearModel]]:  # fmt: skip
    """:func:`choose_c` over one prepared problem (freed on return, before the final refit)."""

    def fit_one(c: float, init: LinearModel | None) -> LinearModel:
        return problem.fit(c, max_iter, tol, init)

    def score(model: LinearModel) -> float:
        return float((model.predict(x_hold) == y_hold).mean())

    return choose_c(fit_one, score, grid, search)


def linear_probe(
    train_x: Tensor | np.ndarray,
    train_y: Tensor | np.ndarray,
    test_x: Tensor | np.ndarray,
    test_y: Tensor | np.ndarray,
    grid: list[float],
    holdout_fraction: float = 0.1,
    seed: int = 0,
    backend: str = "auto",
    max_iter: int = 1000,
    tol: float = 1e-6,
    device: str = "cpu",
    search: str = "coarse_to_fine",
) -> LinearResult:
    """C chosen on a hold-out of the train split (:func:`choose_c`), refit on all of it (warm
    started from the hold-out fit), accuracy on the test split."""
    xtr, ytr = np.asarray(train_x, dtype=np.float64), np.asarray(train_y)
    xte, yte = np.asarray(test_x, dtype=np.float64), np.asarray(test_y)
    if len(xtr) < 2 or len(xte) == 0:
        raise ValueError(f"linear probe needs >= 2 train and >= 1 test samples (got {len(xtr)}, {len(xte)})")
    if len(np.unique(ytr)) < 2:
        raise ValueError("linear probe needs at least 2 classes in the train split")
    backend = choose_backend(backend, xtr.shape[0], xtr.shape[1], device)
    fit_i, hold_i = holdout_split(len(xtr), holdout_fraction, seed)
    grid = sorted(grid)
    best, val, models = _sweep(make_problem(backend, xtr[fit_i], ytr[fit_i], device), xtr[hold_i], ytr[hold_i],
                               grid, search, max_iter, tol)  # fmt: skip
    final = make_problem(backend, xtr, ytr, device).fit(grid[best], max_iter, tol, models[best])
    pred = final.predict(xte)
    return LinearResult(float((pred == yte).mean()), grid[best], {grid[i]: v for i, v in sorted(val.items())},
                        pred, backend, {"fits": len(val) + 1, "search": search})  # fmt: skip
