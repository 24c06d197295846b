"""Loss curves from metrics.jsonl: every loss term gets a panel; a torn last line is ignored."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from evaluation.plots import plot_loss_curves
from pretrain.metrics import read_metrics


def test_loss_curves_png(tmp_path: Path) -> None:
    lines = [
        json.dumps(
            {
                "step": s,
                "phase": "main" if s < 6 else "highres",
                "loss": 10 - s,
                "dino": 8 - s / 2,
                "ibot": 2.0,
                "koleo": -0.1,
            }
        )
        for s in range(10)
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 10, "lo')
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 10
    out = plot_loss_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert out is not None
    with Image.open(out) as img:
        width, height = img.size
    assert width > 3 * height, "four panels side by side (loss, dino, ibot, koleo)"


def test_nothing_to_plot(tmp_path: Path) -> None:
    assert plot_loss_curves(tmp_path / "missing.jsonl", tmp_path / "x.png") is None
