"""The ``evaluations`` table: rows per subject/protocol/metric, the change against the previous
evaluation of the same benchmark, a drop flagged, retries idempotent."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_catalog.catalog import Catalog
from data_catalog.evaluations import read_evaluations, record_evaluation


def rows(
    eval_id: str, linear: float, knn: float = 0.5, settings: str = "s1", benchmark: str = "b"
) -> list[dict]:
    base = {"eval_id": eval_id, "benchmark": benchmark, "settings_key": settings, "subject": "checkpoint"}
    return [
        {**base, "protocol": "linear", "metric": "top1", "value": linear},
        {**base, "protocol": "knn", "metric": "top1@k20", "value": knn},
        {**base, "subject": "random_init", "protocol": "linear", "metric": "top1", "value": 0.2},
    ]


def by(written: list[dict], subject: str, protocol: str) -> dict:
    return next(r for r in written if r["subject"] == subject and r["protocol"] == protocol)


def test_change_against_previous_evaluation_and_drop_flag(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    _, first = record_evaluation(catalog, rows("e1", 0.80))
    assert by(first, "checkpoint", "linear")["previous_value"] is None
    assert by(first, "checkpoint", "linear")["dropped"] is False
    _, second = record_evaluation(catalog, rows("e2", 0.70, knn=0.504), tolerance=0.005)
    lin = by(second, "checkpoint", "linear")
    assert lin["previous_value"] == 0.80 and lin["previous_eval_id"] == "e1"
    assert lin["delta"] == pytest.approx(-0.10) and lin["dropped"] is True
    knn = by(second, "checkpoint", "knn")
    assert knn["delta"] == pytest.approx(0.004) and knn["dropped"] is False
    assert by(second, "random_init", "linear")["delta"] == 0.0
    table = read_evaluations(catalog)
    assert table.num_rows == 6
    assert set(table.column("row_id").to_pylist()) >= {
        "e2/checkpoint/linear/top1",
        "e1/random_init/linear/top1",
    }


def test_other_settings_or_benchmarks_are_not_compared(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    record_evaluation(catalog, rows("e1", 0.80))
    _, other = record_evaluation(catalog, rows("e2", 0.10, settings="s2"))
    assert by(other, "checkpoint", "linear")["previous_value"] is None
    _, bench = record_evaluation(catalog, rows("e3", 0.10, benchmark="c"))
    assert by(bench, "checkpoint", "linear")["previous_value"] is None


def test_retried_evaluation_replaces_its_own_rows(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    record_evaluation(catalog, rows("e1", 0.80))
    record_evaluation(catalog, rows("e2", 0.70))
    _, again = record_evaluation(catalog, rows("e2", 0.70))
    assert by(again, "checkpoint", "linear")["previous_eval_id"] == "e1"  # not itself
    assert read_evaluations(catalog).num_rows == 6


def test_bad_rows_are_clear_errors(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    with pytest.raises(ValueError, match="unknown fields \\['colour'\\]"):
        record_evaluation(catalog, [{**rows("e1", 0.5)[0], "colour": "red"}])
    with pytest.raises(ValueError, match="needs \\['value'\\]"):
        record_evaluation(catalog, [{**rows("e1", 0.5)[0], "value": None}])
    with pytest.raises(ValueError, match="one evaluation and benchmark"):
        record_evaluation(catalog, rows("e1", 0.5) + rows("e2", 0.5))
