"""Evaluation benchmarks on disk: ImageFolder directories and tars, fixed held-out splits, bad input.

``make_image_folder`` (imported by the other test_eval_* modules) writes real JPEG files whose
colour depends on the class, so even a small network separates them.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.config import BenchmarkConfig, EvalConfig
from evaluation.datasets import load_benchmark, resolve_source

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 220), (230, 210, 40), (160, 60, 200)]


def make_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 40, seed: int = 0,
                      prefix: str = "img") -> Path:  # fmt: skip
    """``root/class_<c>/<prefix>_<i>.jpg``: class colour + noise + a bright square that moves."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(COLOURS[c % len(COLOURS)], dtype=np.float64)
            arr = base + rng.normal(0, 25, (size, size, 3))
            x, y = rng.integers(0, size // 2, 2)
            arr[y : y + size // 3, x : x + size // 3] = 255 - base
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
                folder / f"{prefix}_{i}.jpg", quality=90
            )
    return root


def test_directory_split_labels_follow_train_classes(tmp_path: Path) -> None:
    train = make_image_folder(tmp_path / "train", classes=3, per_class=4)
    test = make_image_folder(tmp_path / "test", classes=2, per_class=2, seed=1)
    bench = load_benchmark("t", BenchmarkConfig(train=str(train), test=str(test)), tmp_path / "cache")
    assert bench.train.classes == ["class_0", "class_1", "class_2"]
    assert len(bench.train.files) == 12 and len(bench.test.files) == 4
    assert bench.test.labels == [0, 0, 1, 1]
    assert bench.warnings == []


def test_tar_of_an_image_folder_is_extracted_once(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "src" / "train", classes=2, per_class=3)
    archive = tmp_path / "train.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="train")
    first = resolve_source(str(archive), tmp_path / "cache")
    assert first.name == "train" and sorted(p.name for p in first.iterdir()) == ["class_0", "class_1"]
    assert resolve_source(str(archive), tmp_path / "cache") == first


def test_holdout_split_is_fixed_per_class_and_disjoint(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "all", classes=2, per_class=10)
    cfg = BenchmarkConfig(train=str(root), holdout_fraction=0.2)
    a = load_benchmark("h", cfg, tmp_path / "cache")
    b = load_benchmark("h", cfg, tmp_path / "cache")
    assert [p for p, _ in a.test.files] == [p for p, _ in b.test.files]
    assert sorted(a.test.labels) == [0, 0, 1, 1]
    assert not {p for p, _ in a.train.files} & {p for p, _ in a.test.files}
    assert len(a.train.files) + len(a.test.files) == 20


def test_empty_split_is_an_error_naming_it(tmp_path: Path) -> None:
    train = make_image_folder(tmp_path / "train", classes=2, per_class=2)
    (tmp_path / "test" / "class_0").mkdir(parents=True)
    with pytest.raises(ValueError, match="test split at .* is empty"):
        load_benchmark("e", BenchmarkConfig(train=str(train), test=str(tmp_path / "test")), tmp_path / "c")


def test_test_class_missing_from_train_is_an_error(tmp_path: Path) -> None:
    train = make_image_folder(tmp_path / "train", classes=2, per_class=2)
    test = make_image_folder(tmp_path / "test", classes=3, per_class=1)
    with pytest.raises(ValueError, match=r"test classes \['class_2'\] are not among the train classes"):
        load_benchmark("u", BenchmarkConfig(train=str(train), test=str(test)), tmp_path / "c")


def test_overlapping_test_folder_is_warned(tmp_path: Path) -> None:
    train = make_image_folder(tmp_path / "train", classes=2, per_class=3)
    same = load_benchmark("o", BenchmarkConfig(train=str(train), test=str(train)), tmp_path / "c")
    assert any("overlaps the train folder" in w for w in same.warnings)
    copy = make_image_folder(tmp_path / "copy", classes=2, per_class=3)  # same seed: same bytes
    dup = load_benchmark("o", BenchmarkConfig(train=str(train), test=str(copy)), tmp_path / "c")
    assert any("6 test image(s) are byte-identical" in w for w in dup.warnings)


def test_changed_image_changes_the_fingerprint(tmp_path: Path) -> None:
    train = make_image_folder(tmp_path / "train", classes=2, per_class=3)
    cfg = BenchmarkConfig(train=str(train), holdout_fraction=0.3)
    bench = load_benchmark("f", cfg, tmp_path / "c")
    before = bench.train.fingerprint
    Image.new("RGB", (40, 40), (1, 2, 3)).save(bench.train.files[-1][0])
    assert load_benchmark("f", cfg, tmp_path / "c").train.fingerprint != before


def test_unknown_benchmark_names_the_closest() -> None:
    from data_catalog.settings import ConfigError

    with pytest.raises(ConfigError, match="unknown benchmark 'cifar1' \\(did you mean 'cifar10'"):
        EvalConfig().benchmark("cifar1")


def test_benchmark_needs_exactly_one_test_split() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="exactly one of 'test'"):
        BenchmarkConfig(train="x")


def test_builtin_imagenette_holds_out_a_fixed_fifth(shared_data: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(cache_dir=str(tmp_path / "cache"))
    bench = load_benchmark("imagenette", cfg.benchmark("imagenette"), cfg.cache_root())
    assert len(bench.train.files) == 1600 and len(bench.test.files) == 400
    assert bench.class_names[0] != bench.train.classes[0]  # display names from classes.tsv
    assert bench.warnings == []
