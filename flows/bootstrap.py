"""Reproduce the shipped bootstrap backbone: ``dinoflow bootstrap-backbone`` (one command).

Ingests the CIFAR-10 train split and the Imagenette subset from ``shared/data`` into a catalog,
writes one dataset version, pretrains the demo-sized ViT on it with this project's engine, exports
the teacher backbone in fp16, and measures kNN accuracy on the CIFAR-10 test split next to the same
architecture at random initialisation. No Prefect server needed; no network.
"""

from __future__ import annotations

import json
import platform
import tarfile
from pathlib import Path
from typing import Any

import torch

from curation.config import CurateConfig
from curation.dataset_version import create_dataset_version
from curation.hashdedup import apply_hash_dedup
from curation.ingest import ingest
from data_catalog.catalog import Catalog
from data_catalog.settings import ConfigError
from evaluation.knn import extract_features, image_folder_loader, knn_accuracy
from pretrain import launch
from pretrain.config import load_config, resume_conflict
from pretrain.metrics import METRICS_FILE, read_metrics
from pretrain.models.io import load_backbone, save_backbone
from pretrain.models.vit import DinoVisionTransformer

SOURCES = {"cifar10-train.tar.gz": "train", "imagenette-train-subset.tar.gz": "imagenette-train-subset"}


def _extract(archive: Path, dest: Path, inner: str) -> Path:
    if not (dest / inner).is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    return dest / inner


CURATE = CurateConfig.model_validate({"filter": {"min_side": 32}})  # CIFAR's 32 px images are kept


def build_catalog(data_dir: Path, workdir: Path) -> Catalog:
    """CIFAR-10 train + Imagenette -> catalog (min side 32 so CIFAR's 32 px images are kept)."""
    catalog = Catalog(str(workdir / "catalog"))
    cfg = CURATE
    for archive, inner in SOURCES.items():
        source = _extract(data_dir / archive, workdir / "src", inner)
        ingest(catalog, str(source), cfg, run_id=f"bootstrap-{inner}")
    apply_hash_dedup(catalog, cfg.dedup, "bootstrap-dedup")
    return catalog


def train_overrides(steps: int, overrides: list[str]) -> list[str]:
    """The demo preset stretched to ``steps`` (epochs of 100 steps), then the user's ``--set`` items."""
    epochs = max(1, steps // 100)
    return [
        f"train.epochs={epochs}",
        "train.iterations_per_epoch=100",
        "train.checkpoint_every=100",
        *overrides,
    ]


def check_run_dir(run_dir: Path, overrides: list[str]) -> None:
    """Before any work: the overrides are valid, and ``run_dir`` holds no run with other settings."""
    remedy = "pass another --workdir (or delete its run/ folder) to train with these settings"
    conflict = resume_conflict(run_dir, load_config("demo", overrides), remedy)
    if conflict is not None:
        raise ConfigError(conflict)


def train(catalog: Catalog, run_dir: Path, overrides: list[str]) -> None:
    args = ["--config", "demo", "--catalog", catalog.root, "--dataset", "bootstrap", "--output-dir", str(run_dir),
            *sum((["--set", o] for o in overrides), [])]  # fmt: skip
    code, tail = launch.run_streaming(
        launch.torchrun_command(args, nproc_per_node=1),
        on_line=lambda line: print(
            launch.format_metrics(r) if (r := launch.parse_metrics(line)) else line, flush=True
        ),
    )
    if code != 0:
        raise RuntimeError("bootstrap training failed:\n" + "\n".join(tail[-30:]))


def knn_cifar10(
    model: torch.nn.Module, data_dir: Path, workdir: Path, size: int, per_class: int
) -> dict[int, float]:
    """kNN (k in 10, 20, 100, 200; T 0.07) on CIFAR-10: ``per_class`` train images per class -> the test split."""
    train_dir = _extract(data_dir / "cifar10-train.tar.gz", workdir / "src", "train")
    test_dir = _extract(data_dir / "cifar10-test.tar.gz", workdir / "src", "test")
    xtr, ytr = extract_features(model, image_folder_loader(str(train_dir), size, size, 256, per_class))
    xte, yte = extract_features(model, image_folder_loader(str(test_dir), size, size, 256))
    return knn_accuracy(xtr, ytr, xte, yte)


def build_bootstrap(data_dir: Path, workdir: Path, out: Path, steps: int, per_class: int = 1000,
                    overrides: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    run_dir = workdir / "run"
    settings = train_overrides(steps, list(overrides or []))
    check_run_dir(run_dir, settings)  # a mistake in --set stops here, before any work
    catalog = build_catalog(data_dir, workdir)
    if catalog.version("datasets") is None:
        curation = {"curate": CURATE.model_dump(mode="json"), "sources": list(SOURCES)}
        create_dataset_version(
            catalog, "bootstrap", seed=0, config={"sources": list(SOURCES)}, curation=curation
        )
    train(catalog, run_dir, settings)
    teacher = load_backbone(run_dir / "teacher_backbone.safetensors").eval()
    size = 64  # the demo preset's global crop size
    torch.manual_seed(0)
    random_init = DinoVisionTransformer(**teacher.arch_kwargs).eval()  # same architecture, untrained
    result = {
        "teacher": knn_cifar10(teacher, data_dir, workdir, size, per_class),
        "random_init": knn_cifar10(random_init, data_dir, workdir, size, per_class),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_backbone(teacher.half(), out / "backbone.safetensors")
    metrics = read_metrics(run_dir / METRICS_FILE)
    record = {
        "knn_cifar10_test": result,
        "train_images_per_class_for_knn": per_class,
        "eval_size": size,
        "steps": metrics[-1]["step"] if metrics else 0,
        "final_loss": metrics[-1]["loss"] if metrics else None,
        "dataset": "bootstrap:v1 (CIFAR-10 train + Imagenette subset, accepted images)",
        "config": (run_dir / "config.yaml").read_text(),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
    }
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    return record
