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
    (strong Wolfe line search) on ``x``'s device and dtype. Divided by C * N, the objective is the
    mean cross-entropy + ||W||^2 / (2 C N), which keeps the scale of the gradient tolerance."""
    n, d = x.shape
    w = torch.zeros(num_classes, d, dtype=x.dtype, device=x.device)
    b = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    if init is not None:
        w, b = init[0].clone(), init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    reg = 1.0 / (2.0 * c * n)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + reg * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


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
) -> LinearResult:
    """C chosen on a hold-out of the train split, refit on all of it, accuracy on the test split."""
    xtr, ytr = np.asarray(train_x, dtype=np.float64), np.asarray(train_y)
    xte, yte = np.asarray(test_x, dtype=np.float64), np.asarray(test_y)
    if len(xtr) < 2 or len(xte) == 0:
        raise ValueError(f"linear probe needs >= 2 train and >= 1 test samples (got {len(xtr)}, {len(xte)})")
    if len(np.unique(ytr)) < 2:
        raise ValueError("linear probe needs at least 2 classes in the train split")
    backend = choose_backend(backend, xtr.shape[0], xtr.shape[1], device)
    fit_i, hold_i = holdout_split(len(xtr), holdout_fraction, seed)
    val: dict[float, float] = {}
    model = None
    for c in sorted(grid):
        model = fit(xtr[fit_i], ytr[fit_i], c, backend, max_iter, tol, device, init=model)
        val[c] = float((model.predict(xtr[hold_i]) == ytr[hold_i]).mean())
    best = max(val.items(), key=lambda kv: (kv[1], -kv[0]))[0]  # ties: the smaller C (more regular)
    final = fit(xtr, ytr, best, backend, max_iter, tol, device)
    pred = final.predict(xte)
    return LinearResult(float((pred == yte).mean()), best, val, pred, backend)
