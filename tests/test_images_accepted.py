"""``data_catalog.images.accepted``: the accepted rows in the caller's columns, from ONE scan of the
table (it used to read the table twice when ``status`` was not among the columns)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from benchmarks.bench_catalog import synthetic_rows
from data_catalog.catalog import Catalog
from data_catalog.images import Status, accepted, update_images, upsert_images


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    catalog = Catalog(str(tmp_path / "catalog"))
    rows = synthetic_rows(range(60), "r1")
    upsert_images(catalog, rows, "r1")
    rejected = [u for i, u in enumerate(rows.column("uri").to_pylist()) if i % 3 == 0]
    statuses = pa.table({"uri": rejected, "status": [Status.REJECTED.value] * len(rejected)})
    update_images(catalog, statuses, "r2")  # version 1: 20 of 60 rejected
    return catalog


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[list[str] | None]:
    calls: list[list[str] | None] = []
    real = Catalog.read

    def counting(self, name, schema, version=None, columns=None, where=None):  # type: ignore[no-untyped-def]
        calls.append(columns)
        return real(self, name, schema, version=version, columns=columns, where=where)

    monkeypatch.setattr(Catalog, "read", counting)
    return calls


def test_accepted_reads_once_and_returns_the_callers_columns(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    all_uris = synthetic_rows(range(60), "r1").column("uri").to_pylist()
    kept = {u for i, u in enumerate(all_uris) if i % 3 != 0}
    calls = _count_reads(monkeypatch)
    table = accepted(catalog, columns=["width", "uri"])
    assert calls == [["width", "uri", "status"]]  # one scan, only the columns it needs
    assert table.column_names == ["width", "uri"] and set(table.column("uri").to_pylist()) == kept
    calls.clear()
    with_status = accepted(catalog, columns=["status", "uri"])
    assert calls == [["status", "uri"]] and with_status.column_names == ["status", "uri"]
    assert set(with_status.column("status").to_pylist()) == {"accepted"} and with_status.num_rows == 40
    calls.clear()
    everything = accepted(catalog)
    assert len(calls) == 1 and everything.num_rows == 40 and len(everything.column_names) == 21
    assert accepted(catalog, version=0, columns=["uri"]).num_rows == 60  # before the rejections


def test_accepted_on_an_empty_catalog(tmp_path: Path) -> None:
    table = accepted(Catalog(str(tmp_path / "none")), columns=["uri", "width"])
    assert table.num_rows == 0 and table.column_names == ["uri", "width"]
