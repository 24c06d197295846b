"""The ``runs`` table: one row per pretraining run, keyed by ``run_id``, upserted as the run progresses.

A run is registered ``running`` when it starts and upserted ``completed`` / ``failed`` /
``cancelled`` when it ends; fields a later upsert leaves out keep their stored values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from data_catalog.catalog import Catalog

TABLE = "runs"
_TS = pa.timestamp("us", tz="UTC")


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),  # the key
        pa.field("name", pa.string()),  # human name (the run directory's name)
        pa.field("kind", pa.string()),  # "pretrain"
        pa.field("dataset", pa.string()),  # the dataset version trained on, "NAME:vN"
        pa.field("dataset_version", pa.int64()),
        pa.field("config_json", pa.string()),  # the resolved training config
        pa.field("output_dir", pa.string()),  # the run directory
        pa.field("status", pa.string(), nullable=False),  # a RunStatus value
        pa.field("started_at", _TS),
        pa.field("finished_at", _TS),  # null while running
        pa.field("steps", pa.int64()),  # global steps done
        pa.field("last_loss", pa.float64()),
        pa.field("checkpoint_uri", pa.string()),  # newest checkpoint
        pa.field("backbone_uri", pa.string()),  # exported teacher backbone (completed runs)
        pa.field("metrics_uri", pa.string()),  # metrics.jsonl
        pa.field("updated_at", _TS),  # when this row was last written
    ]
)


def read_runs(catalog: Catalog, version: int | None = None) -> pa.Table:
    """All runs (optionally at an older table ``version``), oldest start first."""
    table = catalog.read(TABLE, RUNS_SCHEMA, version=version)
    if table.num_rows == 0:
        return table
    return table.sort_by([("started_at", "ascending"), ("run_id", "ascending")])


def get_run(catalog: Catalog, run_id: str) -> dict[str, Any]:
    """The row of ``run_id`` as a dict; a clear error listing the known run ids when absent."""
    table = catalog.read(TABLE, RUNS_SCHEMA)
    rows = table.filter(pc.equal(table.column("run_id"), run_id)).to_pylist()
    if not rows:
        known = sorted(table.column("run_id").to_pylist())
        raise KeyError(f"run {run_id!r} not found in catalog {catalog.root}; known runs: {known or 'none'}")
    return dict(rows[0])


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(RUNS_SCHEMA.names)
    if unknown:
        raise ValueError(f"runs row has unknown fields {sorted(unknown)}; valid: {RUNS_SCHEMA.names}")
    if not row.get("run_id"):
        raise ValueError("runs row needs a run_id")
    status = row.get("status")
    if status is not None and status not in {s.value for s in RunStatus}:
        raise ValueError(f"run status {status!r} is not one of {[s.value for s in RunStatus]}")
    out = dict(row)
    dataset, version = out.get("dataset"), out.get("dataset_version")
    if dataset and ":" not in dataset and version is not None:
        out["dataset"] = f"{dataset}:v{int(version)}"  # a bare name plus its version -> "NAME:vN"
    return out


def register_run(catalog: Catalog, row: dict[str, Any]) -> int:
    """Insert or update the run ``row["run_id"]`` in one atomic commit. Returns the table version.

    Fields missing from ``row`` keep their stored values (a new run gets nulls); ``status`` is
    required for a new run. ``dataset`` given as a bare name with ``dataset_version`` is stored as
    ``NAME:vN``.
    """
    new = _normalise(row)
    try:
        merged = {**get_run(catalog, new["run_id"]), **new}
    except KeyError:
        merged = new
    if merged.get("status") is None:
        raise ValueError(f"run {new['run_id']!r} needs a status: one of {[s.value for s in RunStatus]}")
    merged["updated_at"] = datetime.now(UTC)
    full = {name: merged.get(name) for name in RUNS_SCHEMA.names}
    data = pa.Table.from_pylist([full], schema=RUNS_SCHEMA)
    return catalog.upsert(TABLE, data, RUNS_SCHEMA, key="run_id", metadata={"run_id": new["run_id"]})
