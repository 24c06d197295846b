"""The ``retrieval`` sub-flow of ``curate`` (``curate.sample.mode: retrieval``): the pool images nearest
a curated seed set, as DINOv2 built LVD-142M (Oquab et al. 2023, section 3).

Seeds: an ImageFolder directory or a tar of one (embedded here with the semantic embedder, through
the one image opener), or a dataset version ``NAME:vN`` of the catalog (its samples' image ids; their
vectors are read from the ``embeddings`` table). ``curation.sampling.retrieval_sample`` takes each
seed's ``retrieval_k`` nearest pool images (or every pool image above ``retrieval_min_similarity``),
deduplicated; the selection goes to ``CATALOG/runs/<run_id>/selection.parquet`` like the balanced one.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import flow, get_run_logger

from data_catalog.catalog import Catalog
from data_catalog.settings import ConfigError
from flows.artifacts import png_markdown, publish_markdown, table_markdown
from flows.clustering import semantic_pool, write_selection
from flows.config import PipelineConfig
from flows.semantic import save_png


def dataset_image_ids(catalog: Catalog, ref: str) -> list[str]:
    """The sample keys (image ids) of dataset version ``ref`` (``NAME:vN``), from its shards."""
    from data_catalog.datasets import get_dataset, parse_dataset_ref
    from data_catalog.shard_index import read_index

    name, version = parse_dataset_ref(ref)
    try:
        record = get_dataset(catalog, name, version)
    except KeyError as exc:
        raise ConfigError(f"curate.sample.retrieval_seed_set: {exc.args[0]}") from None
    index = read_index(record.index_uri)
    fs, ids = catalog.filesystem(), set[str]()
    for shard in index.shards:
        url = (
            shard.url
            if "://" in shard.url or shard.url.startswith("/")
            else posixpath.join(record.shards_uri, shard.url)
        )
        with fs.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            ids.update(os.path.basename(m.name).split(".", 1)[0] for m in tar if m.isfile())
    return sorted(ids)


def check_seed_set(config: PipelineConfig, catalog: Catalog) -> None:
    """Before the sub-flow: a seed set naming a dataset version names one that exists (one line)."""
    from data_catalog.datasets import get_dataset, parse_dataset_ref

    spec = config.curate.sample.retrieval_seed_set
    if spec is None:
        raise ConfigError("curate.sample.mode=retrieval needs curate.sample.retrieval_seed_set")
    if not Path(spec).exists() and ":" in spec:
        try:
            get_dataset(catalog, *parse_dataset_ref(spec))
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"curate.sample.retrieval_seed_set: {exc.args[0]}") from None


def seed_vectors(config: PipelineConfig, catalog: Catalog, model_id: str, checkpoint: str) -> np.ndarray:
    """[S, D] semantic vectors of the seed set (see the module docstring)."""
    from data_catalog.embeddings import embedded_ids, read_embeddings

    spec = config.curate.sample.retrieval_seed_set
    if spec is None:
        raise ConfigError("curate.sample.mode=retrieval needs curate.sample.retrieval_seed_set")
    if not Path(spec).exists() and ":" in spec:
        ids = dataset_image_ids(catalog, spec)
        have = embedded_ids(catalog, model_id)
        kept = [i for i in ids if i in have]
        if len(kept) < len(ids):
            get_run_logger().warning(
                "%d of %d seed images have no %s vector", len(ids) - len(kept), len(ids), model_id
            )
        if not kept:
            raise ConfigError(
                f"curate.sample.retrieval_seed_set {spec}: none of its images has a {model_id} vector"
            )
        return read_embeddings(catalog, model_id, kept)[1]
    from curation.embed import load_embedder
    from curation.leaks import embed_uris, list_eval_set

    try:
        seeds = list_eval_set("seeds", spec)
    except ValueError as exc:
        raise ConfigError(f"curate.sample.retrieval_seed_set: {exc}") from None
    descriptor = load_embedder(checkpoint, "semantic")
    return embed_uris(descriptor, seeds.column("uri").to_pylist(), config.curate.embed, mirror=False)


@flow(name="retrieval")
def retrieval_stage(config: PipelineConfig, run_id: str, semantic: dict[str, Any]) -> dict[str, Any]:
    """The seed set's nearest pool images -> the selection; returns counts and its uri."""
    from curation.plots import cluster_grid
    from curation.sampling import retrieval_from_config

    catalog, sample = Catalog(config.catalog), config.curate.sample
    pool, x, missing = semantic_pool(catalog, semantic["model_id"])
    if pool.num_rows == 0:
        raise ConfigError(f"retrieval: no accepted image has a {semantic['model_id']} vector")
    seeds = seed_vectors(config, catalog, semantic["model_id"], semantic["checkpoint"])
    picked = retrieval_from_config(x, seeds, sample, gpu=config.curate.cluster.gpu)
    selection = pool.take(pa.array(picked, pa.int64()))
    uri = write_selection(catalog, run_id, selection)
    summary = {
        "mode": "retrieval", "model_id": semantic["model_id"], "seed_set": sample.retrieval_seed_set,
        "seeds": int(len(seeds)), "k": sample.retrieval_k, "min_similarity": sample.retrieval_min_similarity,
        "pool": pool.num_rows, "without_vectors": missing, "selected": int(len(picked)), "selection": uri,
    }  # fmt: skip
    get_run_logger().info(
        "retrieval: %d seeds selected %d of %d pool images", len(seeds), len(picked), pool.num_rows
    )
    uris = selection.column("uri").to_pylist()
    groups = {
        f"retrieved {i + 1}-{min(i + 6, len(uris))}": uris[i : i + 6] for i in range(0, min(len(uris), 24), 6)
    }
    grid = ""
    if groups:
        data = cluster_grid(catalog, groups)
        grid = "## Retrieved images\n\n" + png_markdown(
            data, "retrieved", save_png(catalog, run_id, "retrieved", data)
        )
    publish_markdown(
        "retrieval", "# Retrieval-based selection\n\n" + table_markdown([summary]) + grid, "retrieval"
    )
    return summary
