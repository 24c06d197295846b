"""The one writer and reader of metrics.jsonl and of the printed DINOFLOW_METRICS lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pretrain.metrics import (
    METRICS_PREFIX,
    MetricsError,
    append_metrics,
    metrics_line,
    parse_metrics,
    read_metrics,
    truncate_metrics,
)

REPO = Path(__file__).resolve().parents[1]


def test_written_records_read_back_and_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    assert read_metrics(path) == []
    rows = [{"step": s, "loss": 10.0 / s, "phase": "main"} for s in range(1, 4)]
    for row in rows:
        append_metrics(path, row)
    assert read_metrics(path) == rows
    with open(path, "a") as f:
        f.write('{"step": 4, "lo')  # the writer was killed mid-line
    assert read_metrics(path) == rows
    truncate_metrics(path, lambda r: r["step"] <= 2)  # resume from the step-2 checkpoint
    assert read_metrics(path) == rows[:2] and path.read_text().endswith("}\n")


def test_a_broken_line_before_the_last_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(MetricsError, match=r"metrics.jsonl:2: not a metrics record"):
        read_metrics(path)


def test_printed_lines_round_trip_with_a_rank_prefix() -> None:
    record = {"step": 3, "loss": 1.5}
    assert parse_metrics(metrics_line(record)) == record
    assert parse_metrics("[rank0]: " + metrics_line(record)) == record
    assert parse_metrics(METRICS_PREFIX + "{broken") is None
    assert parse_metrics(METRICS_PREFIX + "[1, 2]") is None
    assert parse_metrics("loss 1.5") is None


def test_the_prefix_and_file_name_are_spelled_in_one_module() -> None:
    """No other module defines the prefix or parses metrics.jsonl itself."""
    offenders = []
    for path in [*REPO.glob("pretrain/**/*.py"), *REPO.glob("flows/*.py"), *REPO.glob("evaluation/*.py")]:
        if path.name == "metrics.py" and path.parent.name == "pretrain":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("DINOFLOW_METRICS ", "metrics.jsonl"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"use pretrain.metrics instead: {offenders}"
