"""The known near-duplicates between CIFAR-10 test and train (Barz & Denzler 2020, "Do we train on test
data? Purging CIFAR of near-duplicates": 3.3% of test images have a duplicate in train), found by the
leak stage's path for small images: both splits listed in place from the shared tars (``TAR#MEMBER``
uris, read by the one uri reader), train as the pool, test as the benchmark, every pool image under
``LeakConfig.small_side`` decided by the small-image verifier (``curation.small_copies``) at the
default ``small_threshold``. The numbers pinned are those of ``docs/semantic-dedup.md`` (measured by
``benchmarks/measure_small_copies.py``), where the threshold was calibrated on generated edits of
train photos only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curation.config import LeakConfig
from curation.leaks import list_eval_set, small_image_matches

RATE = (0.03, 0.055)  # test images with a verified copy in train (measured 0.0400 at the default 0.75)
SAME_CLASS = 0.98  # of the matched pairs (measured 0.998; the class token at cosine 0.99: 0.75)


@pytest.mark.slow
def test_cifar10_test_images_with_near_duplicates_in_train_are_found(shared_data: Path) -> None:
    test_set = list_eval_set("cifar10-test", str(shared_data / "cifar10-test.tar.gz"))
    train_set = list_eval_set("cifar10-train", str(shared_data / "cifar10-train.tar.gz"))
    assert test_set.num_rows == 10_000 and train_set.num_rows == 50_000
    side = pa.array([32] * train_set.num_rows, pa.int32())
    pool = train_set.append_column("width", side).append_column("height", side)
    cfg = LeakConfig()
    small, best, score = small_image_matches(pool, test_set, cfg)
    assert small.all()  # 32 px: every pool image takes the small-image path
    leak = score >= cfg.small_threshold
    matched_tests = np.unique(best[leak])
    rate = len(matched_tests) / test_set.num_rows
    same = (
        np.array(pool.column("label").to_pylist())[leak]
        == np.array(test_set.column("label").to_pylist())[best[leak]]
    )
    assert RATE[0] <= rate <= RATE[1], f"{rate:.4f} of test images matched at {cfg.small_threshold}"
    assert same.mean() >= SAME_CLASS, f"only {same.mean():.3f} of the matches share their class"
