"""The catalog and source I/O tasks retry a transient error with backoff, and fail at once on a
permanent one (a missing path, a config mistake): ``flows/retries.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.prefect


def test_io_task_retries_transient_errors_only(prefect_harness: None, tmp_path: Path) -> None:
    from prefect import flow

    from flows import curate, dataset
    from flows.retries import BACKOFF, RETRIES, io_task

    calls: list[str] = []

    @io_task("flaky-read")
    def read(kind: str) -> str:
        calls.append(kind)
        if kind == "hiccup" and calls.count(kind) < RETRIES:
            raise ConnectionError("connection reset by peer")  # an object store's bad second
        if kind == "missing":
            raise FileNotFoundError(f"source {tmp_path / 'nope'} does not exist")
        return "read"

    @flow
    def reads() -> tuple[str, bool]:
        fast = read.with_options(retry_delay_seconds=0)  # the same retry rule, without the waits
        return fast("hiccup"), fast("missing", return_state=True).is_failed()

    hiccup, missing_failed = reads()
    assert hiccup == "read" and calls.count("hiccup") == RETRIES  # failed twice, the third try worked
    assert missing_failed and calls.count("missing") == 1  # a missing path: not retried
    assert BACKOFF(RETRIES) == [2.0, 4.0, 8.0]
    for task in (curate.plan_partitions, curate.ingest_partition, curate.commit_ingest, curate.hash_dedup,
                 dataset.dataset_version):  # fmt: skip
        assert task.retries == RETRIES and task.retry_condition_fn is not None
