"""The first ingest into a catalog streams its staged rows into a new images table."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

import data_catalog.images as images
from benchmarks.bench_catalog import synthetic_rows
from curation.ingest import commit_ingest
from data_catalog.catalog import Catalog
from data_catalog.images import IMAGES_SCHEMA, TABLE, read_images


def _stage(tmp_path: Path, ranges: list[range]) -> list[str]:
    paths = []
    for i, ids in enumerate(ranges):
        path = tmp_path / "staging" / f"part-{i:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(synthetic_rows(ids, "first", "night-1"), path, row_group_size=300)
        paths.append(str(path))
    return paths


def test_first_commit_creates_version_0_with_every_staged_row(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog")
    staged = _stage(tmp_path, [range(0, 1000), range(1000, 1500), range(1500, 1500)])
    assert commit_ingest(catalog, staged, "first") == 0
    table = read_images(catalog)
    assert table.schema == IMAGES_SCHEMA
    assert sorted(table.column("uri").to_pylist()) == sorted(
        synthetic_rows(range(1500), "first", "night-1").column("uri").to_pylist()
    )
    assert catalog.history(TABLE)[0]["run_id"] == "first"
    # the next run merges into the table as before
    assert commit_ingest(catalog, _stage(tmp_path / "2", [range(1500, 1600)]), "second") == 1
    assert read_images(catalog).num_rows == 1600


@pytest.mark.parametrize("coarse_hash", [False, True])
def test_a_duplicate_uri_aborts_the_first_commit_with_nothing_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coarse_hash: bool
) -> None:
    if coarse_hash:  # every uri hashes alike: the exact second pass must decide
        monkeypatch.setattr(images, "_uri_hash", len)
    catalog = Catalog(tmp_path / "catalog")
    staged = _stage(tmp_path, [range(0, 1000), range(999, 1200)])  # uri 999 staged twice
    with pytest.raises(ValueError, match="duplicate uri"):
        commit_ingest(catalog, staged, "first")
    assert not catalog.exists(TABLE)  # nothing committed: the next run starts clean
    staged = _stage(tmp_path / "fixed", [range(0, 1000), range(1000, 1200)])
    assert commit_ingest(catalog, staged, "first") == 0
    assert read_images(catalog, columns=["uri"]).num_rows == 1200


def test_colliding_hashes_of_distinct_uris_still_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "_uri_hash", len)  # many clashes, no duplicate
    catalog = Catalog(tmp_path / "catalog")
    assert commit_ingest(catalog, _stage(tmp_path, [range(0, 700), range(700, 900)]), "first") == 0
    assert read_images(catalog, columns=["uri"]).num_rows == 900
