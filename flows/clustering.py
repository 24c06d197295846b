"""The ``cluster`` sub-flow of ``curate``: hierarchical k-means of the pool, then the selection.

Pool: the accepted images (one row per image id, the lowest uri) that have a vector of the semantic
embedder. ``curation.kmeans.hierarchical_kmeans`` clusters it (Vo et al. 2024), the ``clusters``
table records every image's cluster per level under ``clustering_id`` = the curate run id, and
``curation.sampling.balanced_sample`` picks ``curate.sample.target_size`` images (or
``dataset.max_samples``; every pool image when neither is set). The selection (``image_id``,
``uri``, ``clustering_id``, ``cluster_ids`` finest first) is written to
``CATALOG/runs/<run_id>/selection.parquet``: the dataset-version stage reads it by that reference,
and its extra columns go into each sample's json.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from data_catalog.catalog import Catalog
from data_catalog.images import accepted
from data_catalog.settings import ConfigError
from flows.artifacts import StageProgress, png_markdown, publish_markdown, table_markdown
from flows.config import PipelineConfig
from flows.semantic import save_png

SELECTION_FILE = "selection.parquet"


def accepted_pool(catalog: Catalog) -> pa.Table:
    """(image_id, uri) of the accepted images, one row per image id (its lowest uri), sorted by id."""
    table = accepted(catalog, columns=["image_id", "uri"])
    table = table.filter(pc.is_valid(table.column("image_id")))
    table = table.sort_by([("image_id", "ascending"), ("uri", "ascending")])
    ids = table.column("image_id").to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return table.filter(pa.array(first))


def semantic_pool(catalog: Catalog, model_id: str) -> tuple[pa.Table, np.ndarray, int]:
    """``(pool rows with a vector, vectors [N, D] float32 in their order, accepted ids without one)``."""
    from data_catalog.embeddings import embedded_table, read_embeddings

    rows = accepted_pool(catalog)
    done = embedded_table(catalog, model_id).cast(pa.schema([("image_id", pa.string())]))
    pool = rows.join(done, keys="image_id", join_type="left semi").sort_by("image_id")
    if pool.num_rows == 0:
        return pool, np.zeros((0, 0), np.float32), rows.num_rows
    _, vectors = read_embeddings(catalog, model_id, pool.column("image_id").to_pylist())
    return pool, vectors, rows.num_rows - pool.num_rows


def sample_target(config: PipelineConfig, pool_size: int) -> int | None:
    """How many images the selection takes (None: all); larger than the pool is a one-line error."""
    target = config.curate.sample.target_size or config.dataset.max_samples
    if target is not None and target > pool_size:
        key = "curate.sample.target_size" if config.curate.sample.target_size else "dataset.max_samples"
        raise ConfigError(
            f"{key}={target} is larger than the pool: {pool_size} accepted images with semantic vectors"
        )
    return target


def check_selection(config: PipelineConfig, catalog: Catalog, model_id: str) -> None:
    """Before any k-means: the levels fit the pool and the target does not exceed it (one-line
    ConfigError). The curate flow calls it in its own body, so the error ends the run in one line."""
    from curation.kmeans import check_levels
    from data_catalog.embeddings import embedded_table

    done = embedded_table(catalog, model_id).cast(pa.schema([("image_id", pa.string())]))
    size = accepted_pool(catalog).join(done, keys="image_id", join_type="left semi").num_rows
    try:
        check_levels(size, list(config.curate.cluster.fitted(size).n_clusters))
    except ValueError as exc:
        raise ConfigError(
            f"curate.cluster.n_clusters: {exc}; set fewer, e.g. --set 'curate.cluster.n_clusters=[8,2]'"
        ) from None
    sample_target(config, size)


def write_selection(catalog: Catalog, run_id: str, table: pa.Table) -> str:
    uri = catalog.uri("runs", run_id, SELECTION_FILE)
    fs = catalog.filesystem()
    fs.makedirs(catalog.uri("runs", run_id), exist_ok=True)
    with fs.open(uri, "wb") as f:
        pq.write_table(table, f)
    return uri


def read_selection(catalog: Catalog, uri: str) -> pa.Table:
    with catalog.filesystem().open(uri, "rb") as f:
        return pq.read_table(f)


def _with_clusters(pool: pa.Table, run_id: str, levels: np.ndarray) -> pa.Table:
    n, n_levels = levels.shape
    flat = pa.array(levels.reshape(-1).astype(np.int32), pa.int32())
    offsets = pa.array(np.arange(0, (n + 1) * n_levels, n_levels, dtype=np.int32))
    pool = pool.append_column("clustering_id", pa.array([run_id] * n, pa.string()))
    return pool.append_column("cluster_ids", pa.ListArray.from_arrays(offsets, flat))


def _sizes_markdown(catalog: Catalog, run_id: str, before: np.ndarray, after: np.ndarray) -> str:
    from curation.plots import cluster_sizes

    data = cluster_sizes(before, after)
    return "## Cluster sizes before and after rebalancing\n\n" + png_markdown(
        data, "cluster sizes", save_png(catalog, run_id, "cluster-sizes", data)
    )


def _grid_markdown(catalog: Catalog, run_id: str, level0: np.ndarray, uris: list[str], seed: int) -> str:
    """A grid of selected images (``uris``, level-0 clusters ``level0``) from a few clusters: the
    largest, the smallest and between."""
    from curation.plots import cluster_grid, pick_grid_clusters

    if len(uris) == 0:
        return ""
    data = cluster_grid(catalog, pick_grid_clusters(level0, uris, seed=seed))
    return "## Selected images of a few clusters\n\n" + png_markdown(
        data, "sample grid", save_png(catalog, run_id, "sample-grid", data)
    )


def balanced_selection(config: PipelineConfig, pool: pa.Table, h: Any, x: np.ndarray) -> np.ndarray:
    """Indices into ``pool`` of the balanced sample (every row when no target is set)."""
    from curation.sampling import balanced_sample

    sample = config.curate.sample
    target = sample_target(config, pool.num_rows)
    if target is None or sample.mode == "all":
        return np.arange(pool.num_rows)
    return balanced_sample(
        h, target, sample.strategy, sample.seed, x if sample.strategy == "closest" else None
    )


def _levels_table(h: Any) -> list[dict[str, Any]]:
    rows = []
    for level in range(h.n_levels):
        sizes = h.sizes(level)
        rows.append({
            "level": level, "clusters": len(sizes), "empty": int((sizes == 0).sum()),
            "largest": int(sizes.max()), "median": float(np.median(sizes)), "smallest": int(sizes.min()),
            "inertia": round(float(h.inertia[level]), 4) if h.inertia else None,
            "seconds": round(float(h.seconds[level]), 3) if h.seconds else None,
        })  # fmt: skip
    return rows


@task(name="hierarchical-kmeans", cache_policy=NO_CACHE)
def kmeans_task(config: PipelineConfig, run_id: str, model_id: str, pool: pa.Table, x: np.ndarray) -> Any:
    """Hierarchical k-means of the pool's vectors -> the ``clusters`` table; returns the Hierarchy."""
    from curation.kmeans import hierarchical_kmeans
    from data_catalog.clusters import write_clusters

    cfg = config.curate.cluster.fitted(len(x))
    if cfg.n_clusters != config.curate.cluster.n_clusters:
        get_run_logger().warning(
            "a pool of %d images is too small for n_clusters=%s: clustering with %s (curate.cluster.fit_to_pool)",
            len(x), config.curate.cluster.n_clusters, cfg.n_clusters,
        )  # fmt: skip
    progress = StageProgress("cluster-progress", "hierarchical k-means", "runs")
    try:
        h = hierarchical_kmeans(x, cfg, progress)
    except ValueError as exc:  # a level finer than the pool: the user's config
        raise ConfigError(f"curate.cluster.n_clusters: {exc}") from None
    ids = pool.column("image_id").to_pylist()
    catalog = Catalog(config.catalog)
    write_clusters(catalog, run_id, model_id, ids, h.levels_matrix(), h.distances, cfg.model_dump())
    return h


@task(name="sample", cache_policy=NO_CACHE)
def sample_task(config: PipelineConfig, run_id: str, pool: pa.Table, h: Any, x: np.ndarray) -> dict[str, Any]:
    """The balanced selection -> ``runs/<run_id>/selection.parquet``; its report: cluster sizes before
    and after rebalancing, a grid of selected images from a few clusters."""
    catalog, sample = Catalog(config.catalog), config.curate.sample
    levels = h.levels_matrix()
    picked = balanced_selection(config, pool, h, x)
    selection = _with_clusters(pool, run_id, levels).take(pa.array(picked, pa.int64()))
    uri = write_selection(catalog, run_id, selection)
    before, after = h.sizes(0), np.bincount(levels[picked, 0], minlength=len(h.sizes(0)))
    summary = {
        "mode": sample.mode, "strategy": sample.strategy, "target_size": sample_target(config, pool.num_rows),
        "seed": sample.seed, "pool": pool.num_rows, "selected": int(len(picked)),
        "largest_cluster_before": int(before.max()), "largest_cluster_after": int(after.max()), "selection": uri,
    }  # fmt: skip
    grid = _grid_markdown(
        catalog, run_id, levels[picked, 0], selection.column("uri").to_pylist(), sample.seed
    )
    publish_markdown(
        "sample",
        "# Balanced selection\n\n" + table_markdown([summary]) + _sizes_markdown(catalog, run_id, before, after)
        + grid,
        "balanced hierarchical sampling",
    )  # fmt: skip
    return summary


@flow(name="cluster")
def cluster_stage(config: PipelineConfig, run_id: str, semantic_model_id: str) -> dict[str, Any]:
    """Hierarchical k-means of the pool -> ``clusters`` table -> balanced selection; returns counts
    and the selection's uri."""
    logger = get_run_logger()
    catalog, cfg = Catalog(config.catalog), config.curate.cluster
    pool, x, missing = semantic_pool(catalog, semantic_model_id)
    if missing:
        logger.warning(
            "%d accepted images have no %s vector: left out of clustering", missing, semantic_model_id
        )
    sample_target(config, pool.num_rows)  # a target above the pool stops here, before any k-means
    cfg = cfg.fitted(pool.num_rows)  # the levels used (recorded as n_clusters)
    h = kmeans_task(config, run_id, semantic_model_id, pool, x)
    levels = _levels_table(h)
    publish_markdown(
        "cluster",
        f"# Hierarchical k-means\n\n{pool.num_rows} images ({missing} accepted without a vector), "
        f"`{semantic_model_id}`, clustering id `{run_id}`\n\n" + table_markdown(levels),
        "hierarchical k-means: clusters, sizes, inertia and time per level",
    )
    summary = sample_task(config, run_id, pool, h, x)
    logger.info(
        "clustered %d images into %s clusters; selected %d",
        pool.num_rows,
        cfg.n_clusters,
        summary["selected"],
    )
    return {
        **summary, "clustering_id": run_id, "model_id": semantic_model_id, "without_vectors": missing,
        "n_clusters": list(cfg.n_clusters), "levels": levels,
        "clusters_table_version": catalog.version("clusters"),
    }  # fmt: skip
