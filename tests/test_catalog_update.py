"""Column updates (``Catalog.update`` / ``update_images``): what hash dedup commits."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from benchmarks.bench_catalog import synthetic_rows
from data_catalog.catalog import Catalog
from data_catalog.images import IMAGES_SCHEMA, TABLE, read_images, update_images, upsert_images


def _by_uri(table: pa.Table) -> dict[str, dict]:
    return {row["uri"]: row for row in table.to_pylist()}


def test_update_sets_only_the_given_columns_of_matching_rows(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog")
    base = synthetic_rows(range(100), "ingest")
    v0 = upsert_images(catalog, base, "ingest")
    uris = base.column("uri").to_pylist()
    changes = pa.table(
        {
            "uri": [uris[3], uris[50], "s3://bucket/not-in-the-catalog.jpg"],
            "status": ["duplicate", "duplicate", "duplicate"],
            "reason": ["exact_duplicate", "near_duplicate_phash", "exact_duplicate"],
            "dup_of_uri": [uris[7], uris[8], uris[9]],
            "run_id": ["dedup"] * 3,
        }
    )
    version = update_images(catalog, changes, "dedup")
    assert version == v0 + 1
    before, after = _by_uri(base), _by_uri(read_images(catalog))
    assert set(after) == set(before)  # the unknown uri was not inserted
    for uri, row in after.items():
        expected = dict(before[uri])
        if uri in (uris[3], uris[50]):
            i = changes.column("uri").to_pylist().index(uri)
            expected.update({c: changes.column(c)[i].as_py() for c in changes.column_names})
        assert row == expected, uri  # every other column, and every other row, as it was
    assert _by_uri(read_images(catalog, version=v0)) == before  # the old version is still there


def test_update_refuses_unknown_columns_and_missing_tables(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog")
    rows = pa.table({"uri": ["a"], "status": ["accepted"]})
    with pytest.raises(FileNotFoundError):
        update_images(catalog, rows, "x")
    upsert_images(catalog, synthetic_rows(range(3), "ingest"), "ingest")
    with pytest.raises(ValueError, match="statuz"):
        catalog.update(TABLE, pa.table({"uri": ["a"], "statuz": ["x"]}), IMAGES_SCHEMA, key="uri")
    with pytest.raises(ValueError, match="duplicate uri"):
        update_images(catalog, pa.table({"uri": ["a", "a"], "status": ["x", "y"]}), "x")
