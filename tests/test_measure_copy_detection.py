"""The copy-detection benchmark: its per-edit bookkeeping, and one small run of the documented command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.copy_detection_parts import Pool, evaluate
from evaluation.copy_detection import PoolItem

REPO = Path(__file__).resolve().parents[1]


def test_evaluate_counts_recall_per_edit_and_group() -> None:
    items = [PoolItem(f"{s}#{e}", s, e, b"") for s in ("a", "b") for e in ("original", "resize_50", "hflip")]
    pool = Pool(items, generated=True)
    # pairs in row order: (0,1) a-orig~resize, (0,2) a-orig~hflip, (1,2) a-resize~hflip, ..., (3,4), (3,5), (4,5)
    assert pool.positive.sum() == 6 and len(pool.positive) == 15
    predicted = np.zeros(15, bool)
    predicted[[0, 1]] = True  # a: both copies found
    k = {(int(i), int(j)): n for n, (i, j) in enumerate(zip(pool.i, pool.j, strict=True))}
    predicted[k[(3, 4)]] = True  # b: the resize found, the flip missed
    predicted[k[(0, 3)]] = True  # a false pair
    res = evaluate(pool, predicted.astype(float), predicted)
    assert (res["tp"], res["fp"], res["fn"]) == (3, 1, 3)
    assert res["edits"]["resize_50"] == 1.0 and res["edits"]["hflip"] == 0.5
    assert res["edits"]["hflip+resize_50"] == 0.0
    assert res["groups"] == {"easy": 1.0, "hard": 0.5}  # copy~copy pairs belong to no group
    assert 0 < res["micro_ap"] < 1
    # the per-edit table lists single edits only, "+" in a name or not
    two = Pool([PoolItem(e, "a", e, b"") for e in ("original", "brightness_+30", "crop_85")], generated=True)
    assert two.single_edits == ["brightness_+30", "crop_85"]
    assert two.edit_names == ["brightness_+30", "crop_85", "brightness_+30+crop_85"]


@pytest.mark.slow
def test_documented_command_runs_on_a_few_photos(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "cd"
    cmd = [sys.executable, "-m", "benchmarks.measure_copy_detection", "--photos", "2", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=600)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    labels = [r["label"] for r in rows]
    assert labels == ["bootstrap backbone, class token", "bootstrap backbone, class token + geometric",
                      "random init of bootstrap backbone", "pHash alone (radius 6)"]  # fmt: skip
    boot = rows[0]["pools"]
    assert set(boot) == {"calibration", "heldout", "imagededup-testdata"}
    assert boot["calibration"]["precision"] >= 0.99 and boot["heldout"]["edits"]["exact"] == 1.0
    text = out.with_suffix(".md").read_text()
    assert "## heldout" in text and "## Throughput (one core)" in text and "μAP" in text
