"""Evaluate a checkpoint on a benchmark with its baselines in the same run (library, no Prefect).

    bench = load_benchmark("cifar10", cfg.benchmark("cifar10"), cfg.cache_root())
    result = evaluate_checkpoint("runs/s14/teacher_backbone.safetensors", bench, cfg)
    result.document  # {"knn": ..., "linear": ..., "retrieval": ..., "random_init": {...}, "raw_pixels": {...}}

Subjects: the checkpoint, the checkpoint a pretraining run started from (when given), the same
architecture at random initialisation, and raw pixels. Each subject's features come from the cache
when its key (content hash or baseline definition), the split's fingerprint and the transform match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from evaluation.checkpoints import Subject, checkpoint_subject, pixels_subject, random_init_subject
from evaluation.config import EvalConfig
from evaluation.datasets import Benchmark, Split
from evaluation.features import BackboneExtractor, Features, PixelExtractor, cached_features, extract
from evaluation.protocols import ProtocolResult, headline, run_protocols

BASELINES = ("start_checkpoint", "random_init", "raw_pixels")


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other names as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def use_bf16(device: str, precision: str) -> bool:
    """bf16 autocast for feature extraction: ``auto`` on CUDA, ``bf16`` anywhere, never ``fp32``."""
    return precision == "bf16" or (precision == "auto" and device.startswith("cuda"))


@dataclass
class SubjectOutcome:
    subject: Subject
    train: Features
    test: Features
    result: ProtocolResult
    cache_hits: int  # 0..2 (train, test)


@dataclass
class EvaluationResult:
    """``document``: the JSON of metrics; ``outcomes``: every subject's features and predictions."""

    document: dict[str, Any]
    outcomes: dict[str, SubjectOutcome] = field(default_factory=dict)

    @property
    def main(self) -> SubjectOutcome:
        return self.outcomes["checkpoint"]


def build_subjects(checkpoint: str, cfg: EvalConfig, start_checkpoint: str | None = None) -> list[Subject]:
    """The checkpoint (strict load: a mismatch is a CheckpointError), then the enabled baselines."""
    main = checkpoint_subject(checkpoint)
    subjects = [main]
    start = start_checkpoint or cfg.baselines.start_checkpoint
    if start:
        subjects.append(checkpoint_subject(start, name="start_checkpoint"))
    if cfg.baselines.random_init:
        subjects.append(random_init_subject(main.model, cfg.baselines.seed))  # type: ignore[arg-type]
    if cfg.baselines.raw_pixels:
        subjects.append(pixels_subject(cfg.baselines.raw_pixels_size))
    return subjects


def subject_features(
    subject: Subject, split: Split, bench: Benchmark, cfg: EvalConfig, device: str
) -> tuple[Features, bool]:
    """``(features, cache hit)`` of one split for one subject."""
    transform = bench.config.transform
    key = subject.key
    if subject.model is not None:
        bf16 = use_bf16(device, cfg.precision)
        extractor: Any = BackboneExtractor(subject.model, device, bf16)
        key += "|bf16" if bf16 else ""  # bf16 features are other numbers: never served for fp32
    else:
        extractor = PixelExtractor(int(subject.info["size"]))

    def compute() -> Features:
        return extract(split, extractor, transform, cfg.batch_size, cfg.num_workers)

    return cached_features(cfg.cache_root(), key, split, transform, compute)


def evaluate_subject(subject: Subject, bench: Benchmark, cfg: EvalConfig, device: str) -> SubjectOutcome:
    train, hit_train = subject_features(subject, bench.train, bench, cfg, device)
    test, hit_test = subject_features(subject, bench.test, bench, cfg, device)
    result = run_protocols(train, test, cfg, len(bench.train.classes), bench.config.linear_features, device)
    return SubjectOutcome(subject, train, test, result, int(hit_train) + int(hit_test))


def benchmark_summary(bench: Benchmark, main: SubjectOutcome) -> dict[str, Any]:
    """Sizes, classes, warnings and the skipped (undecodable) files of a benchmark."""
    skipped = main.train.skipped + main.test.skipped
    return {
        "name": bench.name,
        "train_root": str(bench.train.root),
        "test_root": str(bench.test.root),
        "classes": bench.class_names,
        "n_train": len(main.train.labels),
        "n_test": len(main.test.labels),
        "skipped": {
            "train": len(main.train.skipped),
            "test": len(main.test.skipped),
            "files": [{"path": p, "reason": r} for p, r in skipped[:50]],
        },  # fmt: skip
        "ignored_files": bench.train.ignored + bench.test.ignored,
        "fingerprint": {"train": bench.train.fingerprint, "test": bench.test.fingerprint},
        "transform": bench.config.transform.model_dump(mode="json"),
        "warnings": list(bench.warnings),
    }


def copy_detection_metrics(subjects: list[Subject], cfg: EvalConfig, device: str) -> dict[str, Any]:
    """The copy-detection protocol (evaluation/copy_protocol.py) on every subject, ``{}`` when disabled,
    ``{"skipped": why}`` when its default photos folder is absent."""
    cd = cfg.copy_detection
    if not cd.enabled:
        return {}
    if cd.photos_dir() is None:
        return {"skipped": "no photos to plant copies of (set evaluate.copy_detection.photos)"}
    from evaluation.copy_protocol import run_copy_detection

    return run_copy_detection(subjects, cd, device)


def metrics_document(
    bench: Benchmark, outcomes: dict[str, SubjectOutcome], cfg: EvalConfig, copy: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The metrics JSON: the checkpoint's protocols at the top level (``knn``, ``linear``,
    ``retrieval``, ``copy_detection``), each baseline's under its name (``random_init``, ``raw_pixels``,
    ``start_checkpoint``; ``copy_descriptor`` holds only ``copy_detection``), and ``summary``: one
    headline number per protocol and subject. ``copy``: :func:`copy_detection_metrics`' result."""
    main = outcomes["checkpoint"]
    copy = copy or {}
    doc: dict[str, Any] = {
        "checkpoint": {k: v for k, v in main.subject.info.items() if k != "arch"},
        "benchmark": benchmark_summary(bench, main),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **main.result.metrics,
    }
    for name in BASELINES:
        if name in outcomes:
            doc[name] = dict(outcomes[name].result.metrics)
    for name, metrics in copy.items():
        if name == "checkpoint":
            doc["copy_detection"] = metrics
        elif name in BASELINES:
            doc[name]["copy_detection"] = metrics
        elif name == "copy_descriptor":
            doc[name] = {"copy_detection": metrics, "model_id": metrics["model_id"]}
    if "pool" in copy or "skipped" in copy:
        doc["copy_detection_pool"] = copy.get("pool") or {"skipped": copy["skipped"]}
    subjects = [s for s in ("checkpoint", *BASELINES, "copy_descriptor") if s == "checkpoint" or s in doc]
    doc["summary"] = {s: headline(doc if s == "checkpoint" else doc[s]) for s in subjects}
    doc["settings"] = {
        "knn": cfg.knn.model_dump(mode="json"),
        "linear": cfg.linear.model_dump(mode="json"),
        "retrieval": cfg.retrieval.model_dump(mode="json"),
        "copy_detection": cfg.copy_detection.model_dump(mode="json"),
        "baselines": cfg.baselines.model_dump(mode="json"),
    }
    return doc


def evaluate_checkpoint(
    checkpoint: str, bench: Benchmark, cfg: EvalConfig, start_checkpoint: str | None = None
) -> EvaluationResult:
    """Every subject on every enabled protocol; see the module docstring."""
    device = resolve_device(cfg.device)
    subjects = build_subjects(checkpoint, cfg, start_checkpoint)
    outcomes = {s.name: evaluate_subject(s, bench, cfg, device) for s in subjects}
    copy = copy_detection_metrics(subjects, cfg, device)
    return EvaluationResult(metrics_document(bench, outcomes, cfg, copy), outcomes)


def misclassified(outcome: SubjectOutcome, protocol: str) -> np.ndarray:
    """Positions (into the test features) of test images the protocol got wrong."""
    pred = outcome.result.predictions[protocol]
    return np.flatnonzero(pred != outcome.test.labels.numpy())


def settings_key(doc: dict[str, Any]) -> str:
    """A short hash of what makes two numbers comparable: transform and protocol settings."""
    import hashlib
    import json

    what = {"transform": doc["benchmark"]["transform"], **doc["settings"]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def catalog_rows(doc: dict[str, Any], eval_id: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """One ``evaluations`` table row per (subject, protocol, metric) of a metrics document."""
    import json

    from evaluation.protocols import flat_metrics

    bench = doc["benchmark"]
    base = {
        "eval_id": eval_id, "checkpoint": doc["checkpoint"].get("path"),
        "checkpoint_sha256": doc["checkpoint"].get("sha256"), "model_id": doc["checkpoint"].get("model_id"),
        "run_id": run_id, "benchmark": bench["name"], "settings_key": settings_key(doc),
        "benchmark_fingerprint": f"{bench['fingerprint']['train'][:16]}:{bench['fingerprint']['test'][:16]}",
        "n_train": bench["n_train"], "n_test": bench["n_test"],
        "skipped": bench["skipped"]["train"] + bench["skipped"]["test"],
        "config_json": json.dumps(doc["settings"], sort_keys=True),
    }  # fmt: skip
    rows = []
    for subject in ("checkpoint", *BASELINES, "copy_descriptor"):
        metrics = doc if subject == "checkpoint" else doc.get(subject)
        if metrics is None:
            continue
        for protocol, metric, value in flat_metrics(metrics):
            rows.append({**base, "subject": subject, "protocol": protocol, "metric": metric, "value": value})
    return rows
