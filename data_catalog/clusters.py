"""The ``clusters`` table: the cluster of every image at every level of one hierarchical k-means.

A row is keyed by (``clustering_id``, ``image_id``): ``clustering_id`` names one clustering (the
curate run that made it), ``model_id`` the embedder whose vectors were clustered
(``kind/arch@sha256[:12]``), ``cluster_ids`` the image's cluster at each level, finest first
(level 0 clusters the vectors, level ``l`` the centroids of level ``l - 1``: Vo et al. 2024), and
``distance`` the squared L2 distance of its vector to its level-0 centroid. A clustering written
again under the same id (a retried run) replaces its rows (``Catalog.upsert``, one commit).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_catalog.catalog import Catalog

TABLE = "clusters"
KEY = ("clustering_id", "image_id")
_TS = pa.timestamp("us", tz="UTC")

CLUSTERS_SCHEMA = pa.schema(
    [
        pa.field("clustering_id", pa.string(), nullable=False),  # one clustering (the curate run), key
        pa.field("image_id", pa.string(), nullable=False),  # sha256 of the image bytes, key
        pa.field("model_id", pa.string(), nullable=False),  # the embedder of the clustered vectors
        pa.field("n_levels", pa.int32(), nullable=False),
        pa.field("cluster_ids", pa.list_(pa.int32()), nullable=False),  # per level, finest first
        pa.field("distance", pa.float32()),  # squared L2 to the level-0 centroid
        pa.field("created_at", _TS),
    ]
)


def _levels(levels: np.ndarray | Sequence[np.ndarray], n: int) -> np.ndarray:
    """[N, L] int32 from an [N, L] array or a list of L arrays [N]; checked."""
    arr = np.stack(list(levels), axis=1) if isinstance(levels, list | tuple) else np.asarray(levels)
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
        raise ValueError(f"write_clusters: cluster ids must be [N={n}, levels >= 1]; got shape {arr.shape}")
    if n and arr.min() < 0:
        raise ValueError("write_clusters: a cluster id is negative")
    return arr.astype(np.int32)


def write_clusters(
    catalog: Catalog,
    clustering_id: str,
    model_id: str,
    image_ids: Sequence[str],
    levels: np.ndarray | Sequence[np.ndarray],
    distances: np.ndarray | None = None,
    config: dict[str, Any] | None = None,
) -> int:
    """Store the clusters of ``image_ids`` (N distinct) at every level: ``levels`` [N, L] (or L
    arrays [N], finest first), ``distances`` [N] to the level-0 centroid. One commit, whose metadata
    records ``config`` (the ClusterConfig as a dict). Returns the table version committed."""
    if not clustering_id or not model_id:
        raise ValueError("write_clusters: clustering_id and model_id must be non-empty")
    ids = [str(i) for i in image_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("write_clusters: an image id appears twice in one clustering")
    arr = _levels(levels, len(ids))
    n, n_levels = arr.shape
    if distances is not None and len(distances) != n:
        raise ValueError(f"write_clusters: {len(distances)} distances for {n} images")
    flat = pa.array(arr.reshape(-1), pa.int32())
    cluster_ids = pa.ListArray.from_arrays(
        pa.array(np.arange(0, (n + 1) * n_levels, n_levels, dtype=np.int32)), flat
    )
    data = pa.table(
        {
            "clustering_id": pa.array([clustering_id] * n, pa.string()),
            "image_id": pa.array(ids, pa.string()),
            "model_id": pa.array([model_id] * n, pa.string()),
            "n_levels": pa.array(np.full(n, n_levels, np.int32)),
            "cluster_ids": cluster_ids,
            "distance": pa.array(
                np.asarray(distances, np.float32) if distances is not None else [None] * n, pa.float32()
            ),
            "created_at": pa.array([datetime.now(UTC)] * n, _TS),
        },
        schema=CLUSTERS_SCHEMA,
    )
    meta = {"clustering_id": clustering_id, "model_id": model_id, "config": json.dumps(config or {})}
    return catalog.upsert(TABLE, data, CLUSTERS_SCHEMA, key=KEY, metadata=meta)


def read_clusters(
    catalog: Catalog,
    clustering_id: str | None = None,
    version: int | None = None,
    image_ids: Sequence[str] | None = None,
) -> pa.Table:
    """Rows of one clustering (every clustering when None), sorted by (clustering_id, image_id),
    optionally only ``image_ids``; at an older table ``version`` when given."""
    where = None
    if clustering_id is not None:
        where = pc.field("clustering_id") == pa.scalar(clustering_id)
    if image_ids is not None:
        wanted = pc.field("image_id").isin(pa.array([str(i) for i in image_ids], pa.string()))
        where = wanted if where is None else where & wanted
    table = catalog.read(TABLE, CLUSTERS_SCHEMA, version=version, where=where)
    table = table.cast(CLUSTERS_SCHEMA) if table.num_rows else CLUSTERS_SCHEMA.empty_table()
    return table.sort_by([("clustering_id", "ascending"), ("image_id", "ascending")])


def clustering_ids(catalog: Catalog, model_id: str | None = None) -> list[str]:
    """Every clustering id (of ``model_id``'s vectors when given), oldest first."""
    table = catalog.read(TABLE, CLUSTERS_SCHEMA, columns=["clustering_id", "model_id", "created_at"])
    if model_id is not None:
        table = table.filter(pc.equal(table.column("model_id").cast(pa.string()), model_id))
    if table.num_rows == 0:
        return []
    first = table.group_by("clustering_id").aggregate([("created_at", "min")])
    first = first.sort_by([("created_at_min", "ascending"), ("clustering_id", "ascending")])
    return [str(c) for c in first.column("clustering_id").to_pylist()]


def cluster_matrix(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``(image ids [N] str, cluster ids [N, L] int64)`` of rows of one clustering (as read)."""
    if len(set(table.column("clustering_id").to_pylist())) > 1:
        raise ValueError("cluster_matrix: the rows hold several clusterings; read one clustering_id")
    ids = np.asarray(table.column("image_id").to_pylist(), dtype=str)
    if table.num_rows == 0:
        return ids, np.zeros((0, 0), np.int64)
    col = table.column("cluster_ids").combine_chunks()
    levels = int(table.column("n_levels")[0].as_py())
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    return ids, values.reshape(table.num_rows, levels)
