"""The ``evaluations`` table: one row per number an evaluation measured.

A row is keyed by ``row_id`` = ``eval_id/subject/protocol/metric``: one evaluation (``eval_id``) of a
checkpoint (``checkpoint_sha256``, ``run_id`` when it came from a pretraining run) on a benchmark
measures several subjects (``checkpoint`` and its baselines ``random_init``, ``raw_pixels``,
``start_checkpoint``) with several protocols (``knn``, ``linear``, ``retrieval``), each giving
metrics (``top1@k20``, ``top1``, ``recall@1``).

Each row also holds the change against the previous evaluation of the same benchmark, subject,
protocol, metric and settings (``settings_key``: a hash of the transform and protocol settings, so a
number is compared only with one measured the same way): ``previous_value``, ``delta`` and
``dropped`` (the value fell by more than the tolerance). Rows are appended per evaluation and never
rewritten; an evaluation retried with the same ``eval_id`` replaces its own rows (idempotent).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from data_catalog.catalog import Catalog

TABLE = "evaluations"
_TS = pa.timestamp("us", tz="UTC")

EVALUATIONS_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string(), nullable=False),  # eval_id/subject/protocol/metric, the key
        pa.field("eval_id", pa.string(), nullable=False),  # one evaluation run
        pa.field("created_at", _TS, nullable=False),
        pa.field("checkpoint", pa.string()),  # the path evaluated
        pa.field("checkpoint_sha256", pa.string()),  # its content
        pa.field("model_id", pa.string()),  # architecture and weights: vit_small-p14@<sha12>
        pa.field("run_id", pa.string()),  # the pretraining run it came from, if any
        pa.field("benchmark", pa.string(), nullable=False),
        pa.field("benchmark_fingerprint", pa.string()),  # train and test files' content
        pa.field("settings_key", pa.string()),  # hash of transform + protocol settings
        pa.field(
            "subject", pa.string(), nullable=False
        ),  # checkpoint | start_checkpoint | random_init | raw_pixels
        pa.field("protocol", pa.string(), nullable=False),  # knn | linear | retrieval
        pa.field("metric", pa.string(), nullable=False),  # top1@k20 | top1 | recall@1 ...
        pa.field("value", pa.float64(), nullable=False),  # 0..1
        pa.field("previous_value", pa.float64()),  # the previous evaluation's, same benchmark/settings
        pa.field("previous_eval_id", pa.string()),
        pa.field("delta", pa.float64()),  # value - previous_value
        pa.field("dropped", pa.bool_()),  # delta < -tolerance
        pa.field("n_train", pa.int64()),
        pa.field("n_test", pa.int64()),
        pa.field("skipped", pa.int64()),  # undecodable images skipped
        pa.field("config_json", pa.string()),  # the evaluation settings
    ]
)

REQUIRED = ("eval_id", "benchmark", "subject", "protocol", "metric", "value")


def read_evaluations(catalog: Catalog, version: int | None = None) -> pa.Table:
    """Every row (optionally at an older table ``version``), oldest first."""
    table = catalog.read(TABLE, EVALUATIONS_SCHEMA, version=version)
    if table.num_rows == 0:
        return table
    return table.sort_by([("created_at", "ascending"), ("row_id", "ascending")])


def _match_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["benchmark"], row.get("settings_key"), row["subject"], row["protocol"], row["metric"])


def previous_rows(catalog: Catalog, benchmark: str, eval_id: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The newest earlier row per (benchmark, settings, subject, protocol, metric), other evaluations only."""
    table = catalog.read(TABLE, EVALUATIONS_SCHEMA, where=pc.field("benchmark") == benchmark)
    rows = [r for r in table.sort_by("created_at").to_pylist() if r["eval_id"] != eval_id]
    return {_match_key(r): r for r in rows}  # later rows overwrite earlier ones


def with_changes(rows: list[dict[str, Any]], previous: dict[tuple[Any, ...], dict[str, Any]],
                 tolerance: float) -> list[dict[str, Any]]:  # fmt: skip
    """``rows`` with ``previous_value``, ``previous_eval_id``, ``delta`` and ``dropped`` filled."""
    out = []
    for row in rows:
        prev = previous.get(_match_key(row))
        new = dict(row)
        if prev is not None:
            delta = float(row["value"]) - float(prev["value"])
            new.update(previous_value=prev["value"], previous_eval_id=prev["eval_id"], delta=delta,
                       dropped=delta < -tolerance)  # fmt: skip
        else:
            new.update(previous_value=None, previous_eval_id=None, delta=None, dropped=False)
        out.append(new)
    return out


def _normalise(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    unknown = set(row) - set(EVALUATIONS_SCHEMA.names)
    if unknown:
        raise ValueError(
            f"evaluations row has unknown fields {sorted(unknown)}; valid: {EVALUATIONS_SCHEMA.names}"
        )
    missing = [k for k in REQUIRED if row.get(k) is None]
    if missing:
        raise ValueError(f"evaluations row needs {missing}")
    full = {name: row.get(name) for name in EVALUATIONS_SCHEMA.names}
    full["row_id"] = "/".join(str(row[k]) for k in ("eval_id", "subject", "protocol", "metric"))
    full["created_at"] = row.get("created_at") or now
    return full


def record_evaluation(
    catalog: Catalog, rows: list[dict[str, Any]], tolerance: float = 0.005
) -> tuple[int, list[dict[str, Any]]]:
    """Append one evaluation's rows (all of one ``eval_id`` and benchmark), each compared with the
    previous evaluation; one atomic commit. Returns ``(table version, rows as written)``."""
    if not rows:
        raise ValueError("an evaluation with no metrics: nothing to record")
    ids = {(r.get("eval_id"), r.get("benchmark")) for r in rows}
    if len(ids) != 1:
        raise ValueError(
            f"record_evaluation takes the rows of one evaluation and benchmark, got {sorted(map(str, ids))}"
        )
    now = datetime.now(UTC)
    full = [_normalise(r, now) for r in rows]
    eval_id, benchmark = next(iter(ids))
    written = with_changes(full, previous_rows(catalog, str(benchmark), str(eval_id)), tolerance)
    data = pa.Table.from_pylist(written, schema=EVALUATIONS_SCHEMA)
    version = catalog.upsert(TABLE, data, EVALUATIONS_SCHEMA, key="row_id", metadata={"eval_id": eval_id})
    return version, written
