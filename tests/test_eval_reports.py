"""Report files exist, are valid PNGs and have the expected pixel sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.evaluate import evaluate_checkpoint
from evaluation.reports import patch_pca_rgb, plot_confusion, write_reports
from tests.test_eval_data import make_image_folder
from tests.test_eval_evaluate import _bench, pico_checkpoint, small_config

EXPECTED = {
    "confusion": (600, 540),
    "per_class": (700, 400),
    "projection": (640, 560),
    "baselines": (700, 420),
    "misclassified": (800, 880),
    "patch_pca": (880, 440),  # 4 images
}


def _png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


@pytest.mark.parametrize("projection", ["tsne", "pca"])
def test_every_report_is_a_png_of_the_expected_size(tmp_path: Path, projection: str) -> None:
    train = make_image_folder(tmp_path / "train", 3, 8)
    test = make_image_folder(tmp_path / "test", 3, 6, seed=1)
    cfg = small_config(tmp_path, report={"projection": projection})
    bench = _bench(tmp_path, train, test, cfg)
    result = evaluate_checkpoint(str(pico_checkpoint(tmp_path / "ck.safetensors")), bench, cfg)
    files = write_reports(result, bench, tmp_path / "report", cfg)
    assert set(files) == set(EXPECTED)
    for name, path in files.items():
        assert path.parent == tmp_path / "report" and _png(path) == EXPECTED[name], name
    assert not list((tmp_path / "report").glob(".*"))  # no temporary files left


def test_confusion_matrix_grows_with_many_classes(tmp_path: Path) -> None:
    y = np.arange(30).repeat(2)
    path = plot_confusion(y, np.roll(y, 1), [f"c{i}" for i in range(30)], tmp_path / "c.png", "30 classes")
    assert _png(path) == (1350, 1215)


def test_patch_pca_components_are_scaled_to_unit_range() -> None:
    g = torch.Generator().manual_seed(0)
    rgb = patch_pca_rgb(torch.randn(2, 16, 8, generator=g), (4, 4))
    assert rgb.shape == (2, 4, 4, 3)
    assert np.allclose(rgb.reshape(-1, 3).min(0), 0) and np.allclose(rgb.reshape(-1, 3).max(0), 1)


def test_misclassified_images_are_taken_from_every_class() -> None:
    from evaluation.reports import _round_robin

    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    assert _round_robin(np.arange(9), labels, 5) == [0, 3, 5, 1, 4]
    assert _round_robin(np.array([6, 7]), labels, 5) == [6, 7]
