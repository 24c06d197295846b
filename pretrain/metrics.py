"""A training run's metrics: the ``metrics.jsonl`` file and the ``DINOFLOW_METRICS {json}`` lines.

One record per logged step, a flat JSON object: ``step`` (global, counted from 1), ``phase``, the
losses (:data:`LOSS_KEYS`: the weighted total and its unweighted terms), the schedule values (``lr``,
``wd``, ``momentum``, ``teacher_temp``), ``images_per_s``, ``total_steps``, ``time`` and memory
peaks. ``pretrain.train`` appends it to ``RUN/metrics.jsonl`` and prints it after
:data:`METRICS_PREFIX`, which the launcher (``pretrain.launch``) and the Prefect sub-flow read back.
This module is the one writer and reader of both forms.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

METRICS_PREFIX = "DINOFLOW_METRICS "
METRICS_FILE = "metrics.jsonl"  # in the run directory
# the weighted total, then its unweighted terms of either objective: for dinov2,
# loss = dino_weight*dino + ibot_weight*ibot + koleo_weight*koleo; for sscd,
# loss = infonce + sscd.entropy_weight*koleo (a record holds the terms of its own objective)
LOSS_KEYS = ("loss", "dino", "ibot", "koleo", "infonce")


class MetricsError(ValueError):
    """A ``metrics.jsonl`` line other than the last is not a JSON object (the file was edited or corrupted)."""


def metrics_line(record: dict[str, Any]) -> str:
    """The printed form of a record: ``DINOFLOW_METRICS {json}`` (one line)."""
    return METRICS_PREFIX + json.dumps(record)


def parse_metrics(line: str) -> dict[str, Any] | None:
    """The record of a printed ``DINOFLOW_METRICS {...}`` line (a prefix such as ``[rank0]`` before it
    is allowed), else None; a broken record is None too (it is progress, never an error)."""
    start = line.find(METRICS_PREFIX)
    if start < 0:
        return None
    try:
        record = json.loads(line[start + len(METRICS_PREFIX) :])
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def append_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line of ``path`` (a kill mid-write can only tear this last line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, in order; ``[]`` when it does not exist.

    A torn last line (the writer was killed mid-line) is ignored; any other line that is not a JSON
    object raises :class:`MetricsError` naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = [(i, ln) for i, ln in enumerate(path.read_text().splitlines(), start=1) if ln.strip()]
    records = []
    for pos, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if pos == len(lines) - 1:
                break  # torn by a kill mid-write
            raise MetricsError(f"{path}:{number}: not a metrics record: {line[:80]!r}")
        records.append(record)
    return records


def truncate_metrics(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite ``path`` (temp file, then rename) with only the records ``keep`` accepts; a torn last
    line goes too. Used on resume to drop lines logged after the checkpoint."""
    path = Path(path)
    if not path.exists():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in read_metrics(path) if keep(r)))
    tmp.replace(path)
