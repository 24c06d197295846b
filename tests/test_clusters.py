"""The clusters table: round trip, replacement on retry, several clusterings side by side, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from data_catalog.catalog import Catalog
from data_catalog.clusters import cluster_matrix, clustering_ids, read_clusters, write_clusters
from data_catalog.export import export_table


def test_round_trip(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "cat")
    ids = [f"{i:064x}" for i in range(50)][::-1]  # written out of order
    levels = np.stack([np.arange(50) % 10, np.arange(50) % 10 // 5], axis=1)
    dist = np.linspace(0, 1, 50, dtype=np.float32)
    write_clusters(cat, "run-a", "semantic/vit_small@abc", ids, levels, dist, config={"n_clusters": [10, 2]})
    table = read_clusters(cat, "run-a")
    assert table.num_rows == 50
    got_ids, got = cluster_matrix(table)
    assert got_ids.tolist() == sorted(ids)
    order = np.argsort(ids)
    assert (got == levels[order]).all()
    np.testing.assert_array_equal(table.column("distance").to_numpy(), dist[order])
    assert set(table.column("model_id").to_pylist()) == {"semantic/vit_small@abc"}
    # the commit metadata records the config
    meta = cat.history("clusters")[0]
    assert json.loads(meta["config"]) == {"n_clusters": [10, 2]}
    # a subset by image id
    sub = read_clusters(cat, "run-a", image_ids=ids[:3])
    assert sorted(sub.column("image_id").to_pylist()) == sorted(ids[:3])


def test_retry_replaces_and_clusterings_coexist(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "cat")
    ids = ["a", "b", "c"]
    write_clusters(cat, "run-a", "m1", ids, [np.array([0, 1, 2]), np.array([0, 0, 1])])
    write_clusters(cat, "run-a", "m1", ids, [np.array([2, 1, 0]), np.array([1, 0, 0])])  # a retry
    write_clusters(cat, "run-b", "m2", ids[:2], [np.array([5, 6])])
    assert read_clusters(cat).num_rows == 5
    _, a = cluster_matrix(read_clusters(cat, "run-a"))
    assert a.tolist() == [[2, 1], [1, 0], [0, 0]]
    _, b = cluster_matrix(read_clusters(cat, "run-b"))
    assert b.tolist() == [[5], [6]]
    assert clustering_ids(cat) == ["run-a", "run-b"]
    assert clustering_ids(cat, model_id="m2") == ["run-b"]
    assert read_clusters(cat, "run-c").num_rows == 0
    with pytest.raises(ValueError, match="several clusterings"):
        cluster_matrix(read_clusters(cat))
    assert clustering_ids(Catalog(tmp_path / "empty")) == []


def test_bad_writes_are_one_line_errors(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "cat")
    with pytest.raises(ValueError, match="twice"):
        write_clusters(cat, "r", "m", ["a", "a"], [np.array([0, 1])])
    with pytest.raises(ValueError, match=r"\[N=2, levels >= 1\]"):
        write_clusters(cat, "r", "m", ["a", "b"], [np.array([0, 1, 2])])
    with pytest.raises(ValueError, match="negative"):
        write_clusters(cat, "r", "m", ["a", "b"], [np.array([0, -1])])
    assert not cat.exists("clusters")


def test_export(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "cat")
    write_clusters(cat, "run-a", "m", ["x", "y"], np.array([[3, 1], [4, 0]]), np.array([0.5, 0.25]))
    assert export_table(cat, "clusters", tmp_path / "c.parquet") == 2
    assert pq.read_table(tmp_path / "c.parquet").column("cluster_ids").to_pylist() == [[3, 1], [4, 0]]
    assert export_table(cat, "clusters", tmp_path / "c.csv") == 2
    rows = pacsv.read_csv(tmp_path / "c.csv").to_pylist()
    assert [json.loads(r["cluster_ids"]) for r in rows] == [[3, 1], [4, 0]]
