"""Linear-probe solvers, same objective, same data, same run: our torch L-BFGS in whitened
coordinates (``evaluation.logreg.TorchProblem``) against scikit-learn's ``LogisticRegression``
(lbfgs) on the raw features.

Features: the shipped bootstrap backbone's class token + mean patch token (256 dims) and the
ImageNet-normalised 32 x 32 pixels (3,072 dims) of the first ``--per-class`` CIFAR-10 train images
per class at 64 px; a 10% hold-out (the probe's) scores each fit. Per C: wall time of each solver
(one fit from zero, ``max_iter`` 1000, tol 1e-6), both hold-out accuracies, and the fraction of
hold-out predictions on which they agree.

    .venv/bin/python -m benchmarks.bench_linear_probe [--per-class 200] [--cs 1e-4 1e-2 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import machine, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "linear_probe.md"


def features(data: Path, per_class: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from evaluation.config import TransformConfig
    from evaluation.datasets import list_image_folder, make_split
    from evaluation.features import BackboneExtractor, PixelExtractor, extract
    from pretrain.models.io import load_backbone

    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(data / "cifar10-train.tar.gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and int(Path(m.name).stem) < per_class]
            tar.extractall(tmp, members=members, filter="data")
        root = Path(tmp) / "train"
        classes, files, _ = list_image_folder(root)
        split = make_split(root, classes, files, 0, "train")
        transform = TransformConfig(policy="squash", resize=64, crop=None)
        backbone = extract(split, BackboneExtractor(load_backbone(REPO / "assets" / "bootstrap-backbone").float()),
                           transform, 128)  # fmt: skip
        pixels = extract(split, PixelExtractor(32), transform, 128)
    return {
        "bootstrap backbone, cls + mean patch (256 d)": (
            backbone.select("cls+patch_mean").numpy(),
            backbone.labels.numpy(),
        ),
        "raw pixels 32 x 32 (3,072 d)": (pixels.cls.numpy(), pixels.labels.numpy()),
    }


def compare(x: np.ndarray, y: np.ndarray, cs: list[float]) -> list[dict[str, Any]]:
    from evaluation.linear import holdout_split
    from evaluation.logreg import SklearnProblem, TorchProblem

    fit_i, hold_i = holdout_split(len(x), 0.1, 0)
    rows = []
    t0 = time.perf_counter()
    torch_problem = TorchProblem(x[fit_i], y[fit_i])
    prep = time.perf_counter() - t0
    sk_problem = SklearnProblem(x[fit_i], y[fit_i])
    for c in cs:
        row: dict[str, Any] = {"C": c, "prep": prep}
        preds = {}
        for name, problem in (("torch", torch_problem), ("sklearn", sk_problem)):
            t0 = time.perf_counter()
            model = problem.fit(c, 1000, 1e-6)
            row[f"{name}_s"] = time.perf_counter() - t0
            preds[name] = model.predict(x[hold_i])
            row[f"{name}_acc"] = float((preds[name] == y[hold_i]).mean())
        row["agree"] = float((preds["torch"] == preds["sklearn"]).mean())
        rows.append(row)
    return rows


def table(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, n: int) -> str:
    lines = [
        f"## Linear-probe solvers: CIFAR-10 train, {n} images ({args.per_class} per class), 10% hold-out",
        "",
        f"Machine: {machine()}; threads {torch.get_num_threads()}; load average at the end {os.getloadavg()[0]:.1f}.",
        "One fit per solver and C, from zero (no warm start), max_iter 1000, tol 1e-6, float64.",
        "",
        "| features | C | torch whitened (s) | scikit-learn lbfgs (s) | speedup | hold-out acc torch / sklearn | predictions agree |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name, rows in results.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['C']:g} | {r['torch_s']:.2f} | {r['sklearn_s']:.2f} | {r['sklearn_s'] / r['torch_s']:.1f}x "
                f"| {r['torch_acc']:.3f} / {r['sklearn_acc']:.3f} | {r['agree']:.3f} |"
            )
        lines.append(f"| {name}: eigendecomposition, once per sweep | | {rows[0]['prep']:.2f} | | | | |")
    lines += ["", f"Command: `.venv/bin/python -m benchmarks.bench_linear_probe {' '.join(args.argv)}`", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--cs", type=float, nargs="+", default=[1e-4, 1e-2, 1.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("DINOFLOW_SHARED_DATA", REPO.parent / "shared" / "data")),
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    if not (args.data / "cifar10-train.tar.gz").is_file():
        print(f"skipped: {args.data / 'cifar10-train.tar.gz'} not found (set DINOFLOW_SHARED_DATA)")
        return 0
    torch.set_num_threads(args.threads)
    feats = features(args.data, args.per_class)
    results = {name: compare(x, y, args.cs) for name, (x, y) in feats.items()}
    n = len(next(iter(feats.values()))[1])
    write_result(args.out, table(results, args, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
