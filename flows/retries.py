"""Retries of the tasks that read or write the catalog or the source (object stores fail now and then).

Only tasks whose retry is safe get them, each checked: listing the source (read only); staging a
partition (one staging file per run and partition, overwritten); the ingest commit (an upsert keyed
by uri: the same rows again change nothing); hash dedup (recomputed from the catalog, an update
keyed by image id); writing a dataset version (temporary files cleaned first, the version visible
only with its final registration). A permanent error (a missing source, a bad value) is not retried
(:func:`transient`). Delays double from :data:`BACKOFF_S` (2, 4, 8 s), with jitter so
that partitions that failed together do not retry together.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

RETRIES = 3
BACKOFF_S = 2.0
BACKOFF = exponential_backoff(backoff_factor=BACKOFF_S)  # task(retry_delay_seconds=BACKOFF)
JITTER = 0.5  # each delay varies by up to half of it

# a mistake, not a hiccup: a missing or forbidden path, a bad value. Retrying would only delay the error.
PERMANENT: tuple[type[BaseException], ...] = (
    FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, TypeError, KeyError,
)  # fmt: skip


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry unless the task failed with one of :data:`PERMANENT` (ConfigError
    is a ValueError)."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, PERMANENT)


def io_task(name: str, **options: Any) -> Any:
    """``@task`` with these retries, for a task whose retry is safe (module doc)."""
    return task(
        name=name, retries=RETRIES, retry_delay_seconds=BACKOFF, retry_jitter_factor=JITTER,
        retry_condition_fn=transient, **options,
    )  # fmt: skip
