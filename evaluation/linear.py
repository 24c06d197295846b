"""Linear probe: multinomial logistic regression on frozen features (DINOv2, Oquab et al. 2023, sec. 7).

Protocol (the paper's and ``dinov2/eval/log_regression.py``'s): a random ``holdout_fraction`` (10%)
of the TRAIN split chooses C among ``10 ** linspace(-6, 5, 45)``; the model is then refit on the
whole train split with that C and scored on the test split, which nothing before has seen.

Objective, the same in both backends (scikit-learn's L2 multinomial ``LogisticRegression``):

    min_{W, b}  C * sum_i CE(W x_i + b, y_i) + 0.5 * ||W||_F^2        (b not penalised)

scikit-learn's ``lbfgs`` solves it on CPU; :func:`torch_logreg_fit` solves the same problem with
full-batch L-BFGS in torch (float64 on CPU, float32 on a GPU) for large sets. The C sweep is warm
started (ascending C, each fit from the previous solution) in both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LinearModel:
    """Weights [K, D] and bias [K] of a fitted probe (class indices 0..K-1)."""

    weight: np.ndarray
    bias: np.ndarray
    classes: np.ndarray

    def decision(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes[self.decision(x).argmax(1)]


@dataclass
class LinearResult:
    top1: float  # accuracy on the test split, 0..1
    c: float  # the C chosen on the hold-out
    val_top1: dict[float, float]  # hold-out accuracy per C of the sweep
    predictions: np.ndarray  # [M] predicted test labels
    backend: str
    extra: dict[str, Any] = field(default_factory=dict)


def sklearn_logreg_fit(
    x: np.ndarray,
    y: np.ndarray,
    c: float,
    max_iter: int = 1000,
    tol: float = 1e-6,
    init: LinearModel | None = None,
) -> LinearModel:
    """scikit-learn's L2 multinomial logistic regression (lbfgs), optionally warm started."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=max_iter, tol=tol, warm_start=init is not None)
    classes = np.unique(y)
    if init is not None and len(classes) > 2 and np.array_equal(init.classes, classes):
        clf.coef_, clf.intercept_ = init.weight.copy(), init.bias.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is the budget the config sets
        clf.fit(x, y)
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: sklearn stores one row; as two softmax rows (+w/2, -w/2)
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    return LinearModel(coef.astype(np.float64), intercept.astype(np.float64), clf.classes_)


def torch_logreg_fit(
    x: Tensor,
    y: Tensor,
    c: float,
    num_classes: int,
    max_iter: int = 1000,
    tol: float = 1e-6,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """``(W [K, D], b [K])`` minimising the module docstring's objective by full-batch L-BFGS
    (strong Wolfe line search) on ``x``'s device and dtype.

    Divided by C * N the objective is mean cross-entropy + reg * ||W||^2 with reg = 1 / (2 C N). It is
    solved in whitened coordinates, an exact change of variables that leaves the optimum unchanged:
    centre the features (the unpenalised bias absorbs the mean), rotate them onto the covariance's
    eigenvectors U (orthogonal: ||W||^2 is unchanged) and scale direction j by s_j = sqrt(lambda_j +
    8 reg), so that both the data term (curvature ~ lambda_j / 4) and the penalty (2 reg) are about
    equally curved in every direction; frozen features are strongly correlated, and on raw features
    L-BFGS needs hundreds of iterations where this needs tens.
    """
    n, _ = x.shape
    reg = 1.0 / (2.0 * c * n)
    mu = x.mean(0)
    xc = x - mu
    evals, rot = torch.linalg.eigh(xc.T @ xc / n)
    scale = (evals.clamp_min(0) + 8 * reg).sqrt()  # [D]
    z = (xc @ rot) / scale  # [N, D] whitened features
    v = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device)
    c0 = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    if init is not None:  # W = (V / s) U^T, b = c0 - W mu  <=>  V = W U s, c0 = b + W mu
        v, c0 = (init[0] @ rot) * scale, init[1] + init[0] @ mu
    v.requires_grad_(True)
    c0.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [v, c0], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ v.T + c0, y) + reg * ((v / scale) ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w = (v.detach() / scale) @ rot.T
    return w, c0.detach() - w @ mu


def _torch_fit_model(
    x: np.ndarray, y: np.ndarray, c: float, max_iter: int, tol: float, device: str, init: LinearModel | None
) -> LinearModel:
    dtype = torch.float64 if torch.device(device).type == "cpu" else torch.float32
    classes = np.unique(y)
    remap = np.searchsorted(classes, y)
    xt = torch.as_tensor(x, dtype=dtype, device=device)
    yt = torch.as_tensor(remap, dtype=torch.long, device=device)
    start = None
    if init is not None and np.array_equal(init.classes, classes):
        start = (torch.as_tensor(init.weight, dtype=dtype, device=device),
                 torch.as_tensor(init.bias, dtype=dtype, device=device))  # fmt: skip
    # two classes: scikit-learn fits the binary model (penalty 0.5 ||w||^2 on the logit difference);
    # the symmetric two-row softmax at C / 2 is that same problem (its rows are -w/2, +w/2)
    c_eff = c / 2 if len(classes) == 2 else c
    w, b = torch_logreg_fit(xt, yt, c_eff, len(classes), max_iter, tol, start)
    return LinearModel(w.double().cpu().numpy(), b.double().cpu().numpy(), classes)


def fit(
    x: np.ndarray, y: np.ndarray, c: float, backend: str, max_iter: int = 1000, tol: float = 1e-6,
    device: str = "cpu", init: LinearModel | None = None,
) -> LinearModel:  # fmt: skip
    """One probe at ``c`` with ``backend`` ``"sklearn"`` or ``"torch"``."""
    if backend == "sklearn":
        return sklearn_logreg_fit(x, y, c, max_iter, tol, init)
    if backend == "torch":
        return _torch_fit_model(x, y, c, max_iter, tol, device, init)
    raise ValueError(f"unknown linear backend {backend!r}; valid: sklearn, torch")


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

    ``grid``: every C (the paper's 45 fits). ``coarse_to_fine``: every 4th C, then every C within 3
    steps of the best of those (18 fits of 45); both warm start each fit from the nearest smaller C
    already fitted. Ties go to the smaller C (the more regularised model).
    """
    coarse, step = sweep_order(len(grid), search)
    models: dict[int, LinearModel] = {}
    val: dict[int, float] = {}

    def visit(i: int) -> None:
        below = [j for j in models if j < i]
        models[i] = fit_one(grid[i], models[max(below)] if below else None)
        val[i] = score(models[i])

    for i in coarse:
        visit(i)
    best = max(val, key=lambda i: (val[i], -i))
    for i in range(max(0, best - step + 1), min(len(grid), best + step)):
        if i not in val:
            visit(i)
    return max(val, key=lambda i: (val[i], -i)), val, models


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

    def fit_one(c: float, init: LinearModel | None) -> LinearModel:
        return fit(xtr[fit_i], ytr[fit_i], c, backend, max_iter, tol, device, init=init)

    def score(model: LinearModel) -> float:
        return float((model.predict(xtr[hold_i]) == ytr[hold_i]).mean())

    best, val, models = choose_c(fit_one, score, grid, search)
    final = fit(xtr, ytr, grid[best], backend, max_iter, tol, device, init=models[best])
    pred = final.predict(xte)
    return LinearResult(float((pred == yte).mean()), grid[best], {grid[i]: v for i, v in sorted(val.items())},
                        pred, backend, {"fits": len(val) + 1, "search": search})  # fmt: skip
