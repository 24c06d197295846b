"""The pictures of an evaluation, as PNG files of fixed pixel sizes (``figure size x DPI``).

- ``confusion.png``: confusion matrix of the test split (rows: true class, row-normalised);
- ``per_class.png``: test accuracy per class;
- ``projection.png``: the test features in 2-D (t-SNE after PCA to 50 dims, van der Maaten and
  Hinton 2008; or PCA), coloured by class;
- ``patch_pca.png``: the first three principal components of the patch features of a few test
  images, fitted jointly over their patches, as RGB (the DINOv2 paper's figure 1, without its
  foreground threshold);
- ``misclassified.png``: test images the probe got wrong, with true and predicted labels;
- ``baselines.png``: every protocol's headline number beside the baselines'.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot state, safe in worker threads)
and written atomically (temporary name, then rename).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from data_catalog.image import open_image

DPI = 100
SIZES: dict[str, tuple[float, float]] = {  # inches at DPI: the PNGs are these x 100 pixels
    "per_class": (7.0, 4.0),
    "projection": (6.4, 5.6),
    "patch_pca": (2.2, 4.4),  # per image column
    "misclassified": (8.0, 8.8),
    "baselines": (7.0, 4.2),
}


def confusion_size(num_classes: int) -> tuple[float, float]:
    """Inches of the confusion matrix: 6 x 5.4, grown with the class count beyond 12."""
    side = max(6.0, 0.45 * num_classes)
    return side, side * 0.9


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=DPI, format="png")
    tmp.replace(path)
    return path


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [K, K]: row = true class, column = predicted class."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def plot_confusion(
    y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str], path: Path, title: str
) -> Path:
    counts = confusion_matrix(y_true, y_pred, len(names))
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = Figure(figsize=confusion_size(len(names)), dpi=DPI)
    ax = fig.subplots()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, [str(n)[:14] for n in names], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(ticks, [str(n)[:14] for n in names], fontsize=7)
    if len(names) <= 20:
        for i, j in np.ndindex(counts.shape):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.subplots_adjust(left=0.2, bottom=0.22, right=0.95, top=0.92)
    return _save(fig, path)


def plot_per_class(
    y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str], path: Path, title: str
) -> Path:
    k = len(names)
    correct = np.bincount(y_true[y_pred == y_true], minlength=k)
    total = np.maximum(np.bincount(y_true, minlength=k), 1)
    acc = correct / total
    fig = Figure(figsize=SIZES["per_class"], dpi=DPI)
    ax = fig.subplots()
    ax.bar(np.arange(k), acc, color="#4C72B0")
    ax.axhline(float((y_pred == y_true).mean()), color="black", linestyle="--", linewidth=1, label="overall")
    ax.set_xticks(np.arange(k), [str(n)[:14] for n in names], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.subplots_adjust(bottom=0.3, top=0.9)
    return _save(fig, path)


def project_2d(features: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """[N, 2] coordinates: PCA, or t-SNE of the first 50 principal components."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float32)
    if method == "pca" or len(x) < 6:
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method != "tsne":
        raise ValueError(f"unknown projection {method!r}; valid: tsne, pca")
    from sklearn.manifold import TSNE

    if x.shape[1] > 50:
        x = PCA(n_components=min(50, len(x)), random_state=seed).fit_transform(x)
    perplexity = min(30.0, (len(x) - 1) / 3)
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)


def plot_projection(features: np.ndarray, labels: np.ndarray, names: Sequence[str], path: Path, title: str,
                    method: str = "tsne", max_points: int = 2000, seed: int = 0) -> Path:  # fmt: skip
    """Scatter of a fixed sample (``seed``) of at most ``max_points`` test features, by class."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(features))[:max_points])
    xy = project_2d(features[keep], method, seed)
    y = labels[keep]
    fig = Figure(figsize=SIZES["projection"], dpi=DPI)
    ax = fig.subplots()
    cmap = "tab10" if len(names) <= 10 else "tab20"
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap=cmap, s=6, vmin=-0.5, vmax=max(len(names), 10) - 0.5)
    if len(names) <= 20:
        handles = [ax.scatter([], [], color=sc.cmap(sc.norm(np.asarray(i))), s=12) for i in range(len(names))]
        ax.legend(handles, [str(n)[:16] for n in names], fontsize=6, loc="best", markerscale=1.2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title} ({method}, {len(keep)} test images)", fontsize=9)
    return _save(fig, path)


def patch_pca_rgb(patches: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Patch features [n, h*w, D] -> [n, h, w, 3] in 0..1: the first three principal components over
    all n*h*w patches, each min-max scaled."""
    n, p, d = patches.shape
    x = patches.reshape(n * p, d).double()
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    comps = (x @ v[:3].T).float()  # [n*p, 3]
    lo, hi = comps.min(0).values, comps.max(0).values
    comps = (comps - lo) / (hi - lo).clamp_min(1e-8)
    return comps.reshape(n, grid[0], grid[1], 3).numpy()


@torch.inference_mode()
def plot_patch_pca(model: torch.nn.Module, images: torch.Tensor, path: Path, title: str) -> Path:
    """Each image (normalised [n, 3, H, W]) above its patch-PCA map."""
    from evaluation.features import denormalize

    out = model.forward_features(images)  # type: ignore[operator]
    patch = int(model.patch_size)  # type: ignore[arg-type]
    grid = (images.shape[2] // patch, images.shape[3] // patch)
    rgb = patch_pca_rgb(out["x_norm_patchtokens"].float().cpu(), grid)
    shown = denormalize(images.cpu()).permute(0, 2, 3, 1).numpy()
    n = len(images)
    fig = Figure(figsize=(SIZES["patch_pca"][0] * n, SIZES["patch_pca"][1]), dpi=DPI)
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        axes[0, i].imshow(shown[i])
        axes[1, i].imshow(rgb[i], interpolation="nearest")
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9, wspace=0.05, hspace=0.05)
    return _save(fig, path)


def plot_misclassified(
    items: Sequence[tuple[str, str, str]], path: Path, title: str, columns: int = 4
) -> Path:
    """A grid of ``(file, true name, predicted name)``, opened through the one image opener."""
    rows = max(1, -(-len(items) // columns))
    fig = Figure(figsize=SIZES["misclassified"], dpi=DPI)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (file, true, pred) in zip(axes.flat, items, strict=False):
        with open(file, "rb") as f:
            ax.imshow(np.asarray(open_image(f.read())))
        ax.set_title(f"true: {true[:16]}\npred: {pred[:16]}", fontsize=7, color="#B22222")
    if not items:
        fig.text(0.5, 0.5, "no misclassified test image", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9, hspace=0.45, wspace=0.1)
    return _save(fig, path)


def plot_baselines(
    summary: dict[str, dict[str, float]], path: Path, title: str, labels: dict[str, str] | None = None
) -> Path:
    """Grouped bars: one group per protocol, one bar per subject (checkpoint first); ``labels``
    name the protocols' numbers (default: kNN top-1, linear top-1, recall@1)."""
    subjects = list(summary)
    protocols = [
        p for p in ("knn", "linear", "retrieval", "copy_detection") if any(p in summary[s] for s in subjects)
    ]
    fig = Figure(figsize=SIZES["baselines"], dpi=DPI)
    ax = fig.subplots()
    width = 0.8 / max(1, len(subjects))
    colours = ["#4C72B0", "#DD8452", "#8C8C8C", "#55A868", "#C44E52"]
    for i, subject in enumerate(subjects):
        values = [summary[subject].get(p, np.nan) for p in protocols]
        xs = np.arange(len(protocols)) + (i - (len(subjects) - 1) / 2) * width
        bars = ax.bar(xs, values, width, label=subject, color=colours[i % len(colours)])
        ax.bar_label(bars, labels=[f"{v:.1%}" if v == v else "" for v in values], fontsize=6)
    names = {"knn": "kNN top-1", "linear": "linear top-1", "retrieval": "recall@1", "copy_detection": "copy μAP",
             **(labels or {})}  # fmt: skip
    ax.set_xticks(np.arange(len(protocols)), [names[p] for p in protocols])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test split")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def write_reports(result: Any, bench: Any, out_dir: Path, cfg: Any) -> dict[str, Path]:
    """Every figure of an :class:`evaluation.evaluate.EvaluationResult` into ``out_dir``."""
    from evaluation.features import build_transform

    main = result.main
    protocol = "linear" if "linear" in main.result.predictions else "knn"
    y_true = main.test.labels.numpy()
    y_pred = np.asarray(main.result.predictions[protocol])
    names = bench.class_names
    tag = f"{bench.name}: {result.document['checkpoint'].get('model_id', '')}"
    rc = cfg.report
    out = {
        "confusion": plot_confusion(y_true, y_pred, names, out_dir / "confusion.png", f"{tag}, {protocol}"),
        "per_class": plot_per_class(y_true, y_pred, names, out_dir / "per_class.png", f"{tag}, {protocol}"),
        "projection": plot_projection(
            main.test.cls.numpy(),
            y_true,
            names,
            out_dir / "projection.png",
            tag,
            rc.projection,
            rc.max_points,
        ),  # fmt: skip
        "baselines": plot_baselines(
            result.document["summary"], out_dir / "baselines.png", tag, headline_labels(result.document)
        ),  # fmt: skip
    }
    files = [bench.test.files[int(i)][0] for i in main.test.index]
    wrong = _round_robin(np.flatnonzero(y_pred != y_true), y_true, rc.misclassified)
    items = [(files[i], names[y_true[i]], names[y_pred[i]]) for i in wrong]
    out["misclassified"] = plot_misclassified(items, out_dir / "misclassified.png", f"{tag}, {protocol}")
    if main.subject.model is not None:
        picks = _one_per_class(y_true, rc.pca_images)
        transform = build_transform(bench.config.transform)
        imgs = []
        for i in picks:
            with open(files[i], "rb") as f:
                imgs.append(transform(open_image(f.read())))
        model = main.subject.model.cpu()
        out["patch_pca"] = plot_patch_pca(model, torch.stack(imgs), out_dir / "patch_pca.png", tag)
    return out


def headline_labels(doc: dict[str, Any]) -> dict[str, str]:
    """What each headline number is (``evaluation.protocols.headline``): the k, the recall cut-off."""
    out = {}
    if "knn" in doc:
        top1 = doc["knn"]["top1"]
        out["knn"] = f"kNN top-1 (k={'20' if '20' in top1 else next(iter(top1))})"
    if "retrieval" in doc:
        r = doc["retrieval"]
        out["retrieval"] = "recall@1" if "recall@1" in r else next(iter(r))
    return out


def _round_robin(positions: np.ndarray, labels: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` of ``positions``, taken in turn from each true class (first of each, then second...)."""
    by_class: dict[int, list[int]] = {}
    for p in positions:
        by_class.setdefault(int(labels[p]), []).append(int(p))
    out: list[int] = []
    depth = 0
    while len(out) < n and any(depth < len(v) for v in by_class.values()):
        out += [v[depth] for _, v in sorted(by_class.items()) if depth < len(v)]
        depth += 1
    return out[:n]


def _one_per_class(labels: np.ndarray, n: int) -> list[int]:
    """Positions of the first test image of each class, then the next ones, up to ``n``."""
    order = np.argsort(labels, kind="stable")
    firsts = [int(order[np.searchsorted(labels[order], c)]) for c in np.unique(labels)]
    rest = [i for i in range(len(labels)) if i not in set(firsts)]
    return (firsts + rest)[:n]
