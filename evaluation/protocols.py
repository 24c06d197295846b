"""Every protocol on one subject's frozen features: kNN, linear probe, retrieval.

Train features fit (kNN bank, probe, gallery); test features are scored. The linear probe's C is
chosen on a hold-out of the TRAIN split (evaluation/linear.py); no test label is seen before the
test accuracy is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluation.config import EvalConfig
from evaluation.features import Features
from evaluation.knn import knn_predict
from evaluation.linear import linear_probe
from evaluation.retrieval import recall_at_k


@dataclass
class ProtocolResult:
    """JSON-ready ``metrics`` ({protocol: {...}}) and test predictions per protocol ([M] labels)."""

    metrics: dict[str, Any]
    predictions: dict[str, np.ndarray] = field(default_factory=dict)


def knn_metrics(
    train: Features, test: Features, cfg: EvalConfig, num_classes: int
) -> tuple[dict, np.ndarray]:
    """Top-1 per k (DINO's weighted kNN) and the predictions at the k nearest 20 (else the first k)."""
    top1, preds = {}, {}
    for k in cfg.knn.ks:
        pred = knn_predict(train.cls, train.labels, test.cls, k, cfg.knn.temperature, num_classes)
        preds[k] = pred.numpy()
        top1[str(k)] = float((pred == test.labels).float().mean())
    shown = 20 if 20 in preds else cfg.knn.ks[0]
    return {"top1": top1, "temperature": cfg.knn.temperature, "features": "cls"}, preds[shown]


def run_protocols(
    train: Features,
    test: Features,
    cfg: EvalConfig,
    num_classes: int,
    linear_features: str | None = None,
    device: str = "cpu",
) -> ProtocolResult:
    """The enabled protocols of ``cfg`` on one subject's features."""
    out = ProtocolResult({})
    if cfg.knn.enabled and cfg.knn.ks:
        out.metrics["knn"], out.predictions["knn"] = knn_metrics(train, test, cfg, num_classes)
    if cfg.linear.enabled:
        kind = linear_features or cfg.linear.features
        lin = cfg.linear
        res = linear_probe(
            train.select(kind).numpy(), train.labels.numpy(), test.select(kind).numpy(), test.labels.numpy(),
            lin.grid(), lin.holdout_fraction, lin.seed, lin.backend, lin.max_iter, lin.tol, device, lin.search,
        )  # fmt: skip
        out.metrics["linear"] = {
            "top1": res.top1,
            "C": res.c,
            "holdout_top1": max(res.val_top1.values()),
            "features": kind if train.patch_mean is not None else "pixels",
            "backend": res.backend,
            "fits": res.extra["fits"],
            "search": res.extra["search"],
        }
        out.predictions["linear"] = res.predictions
    if cfg.retrieval.enabled and cfg.retrieval.ks:
        recall = recall_at_k(
            test.cls.numpy(), test.labels.numpy(), train.cls.numpy(), train.labels.numpy(), cfg.retrieval.ks
        )
        out.metrics["retrieval"] = {f"recall@{k}": v for k, v in recall.items()}
    return out


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """One number per protocol (for tables and the baselines chart): kNN top-1 at k=20 (else the
    first k), linear top-1, retrieval recall@1 (else the first recall), copy-detection μAP."""
    out: dict[str, float] = {}
    if "knn" in metrics:
        top1 = metrics["knn"]["top1"]
        out["knn"] = top1["20"] if "20" in top1 else next(iter(top1.values()))
    if "linear" in metrics:
        out["linear"] = metrics["linear"]["top1"]
    if "retrieval" in metrics:
        r = metrics["retrieval"]
        out["retrieval"] = r["recall@1"] if "recall@1" in r else next(iter(r.values()))
    if "copy_detection" in metrics:
        out["copy_detection"] = metrics["copy_detection"]["muap"]
    return out


def flat_metrics(metrics: dict[str, Any]) -> list[tuple[str, str, float]]:
    """``(protocol, metric, value)`` rows: ``("knn", "top1@k20", 0.61)``, ``("linear", "top1", ...)``."""
    rows: list[tuple[str, str, float]] = []
    if "knn" in metrics:
        rows += [("knn", f"top1@k{k}", v) for k, v in metrics["knn"]["top1"].items()]
    if "linear" in metrics:
        rows.append(("linear", "top1", metrics["linear"]["top1"]))
    if "retrieval" in metrics:
        rows += [("retrieval", k, v) for k, v in metrics["retrieval"].items()]
    if "copy_detection" in metrics:
        cd = metrics["copy_detection"]
        at = cd["recall_at_p"]
        rows += [
            ("copy_detection", "muap", cd["muap"]),
            ("copy_detection", f"recall@p{at['min_precision']:g}", at["recall"]),
        ]
        rows += [("copy_detection", f"top1_{g}", v) for g, v in cd["top1"].items()]
    return rows
