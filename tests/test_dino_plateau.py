"""The plateau measurement of docs/dino-plateau.md: its collapse diagnostics and its command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.measure_dino_plateau import distribution_stats

REPO = Path(__file__).resolve().parents[1]


def test_entropies_tell_collapse_to_uniform_from_collapse_to_one() -> None:
    k = 64
    uniform = torch.full((8, k), 1.0 / k)
    assert distribution_stats(uniform) == pytest.approx((math.log(k), math.log(k)), abs=1e-5)
    one_prototype = torch.zeros(8, k)
    one_prototype[:, 3] = 1.0  # every image to the same prototype
    assert distribution_stats(one_prototype) == (0.0, 0.0)
    spread = torch.eye(k)[:8]  # confident and different per image: the healthy end state
    h, h_mean = distribution_stats(spread)
    assert h == 0.0 and abs(h_mean - math.log(8)) < 1e-6


def test_the_documented_command_runs_and_records_every_step(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "plateau.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.measure_dino_plateau",
        "--steps",
        "2",
        "--images",
        "64",
        "--out",
        str(out),
    ]
    env = {**os.environ, "DINOFLOW_SHARED_DATA": str(shared_data), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["step"] for r in rows] == [1, 2]
    first = rows[0]
    assert first["ln_k"] == math.log(4096) and first["teacher_temp"] == 0.04
    assert first["t_image_spread"] < 1e-2  # LayerScale 1e-5: the teacher ignores the image at init
    assert abs(first["kl"] - (first["dino"] - first["h_teacher"])) < 1e-9
    assert "| step | teacher_temp | dino |" in done.stdout
