"""The dataset-version stage: the selection (or every accepted image) -> webdataset shards + a row in
``datasets``. With a selection (``flows.clustering``: balanced over the clusters) its extra columns
(``clustering_id``, ``cluster_ids`` per level, finest first) go into each sample's json; without one
the version is a uniform sample of the accepted images (``dataset.max_samples``), as before. The
selection rule, the embedders' model ids and the thresholds are recorded under ``selection`` in the
stage config the version keeps."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from curation.dataset_version import create_dataset_version
from data_catalog.catalog import Catalog
from data_catalog.datasets import versions
from flows.artifacts import StageProgress, publish_markdown
from flows.config import DatasetStageConfig
from flows.retries import io_task
from flows.settings import curation_record


def previous_version(catalog: Catalog, name: str) -> list[str]:
    """``[NAME:vN]`` of the newest version of ``name`` (the new version's parent), or ``[]``."""
    found = versions(catalog, name) if catalog.exists("datasets") else []
    return [f"{name}:v{found[-1]}"] if found else []


@io_task("dataset-version")
def dataset_version(
    catalog: str,
    stage: DatasetStageConfig,
    selection_uri: str | None = None,
    selection_record: dict[str, Any] | None = None,
) -> str:
    """Write a new immutable dataset version and return its reference ``NAME:vN``."""
    from flows.clustering import read_selection

    logger = get_run_logger()
    on_progress = StageProgress(f"dataset-{stage.name}-progress", f"dataset {stage.name}", "samples")

    cat = Catalog(catalog)
    selection = read_selection(cat, selection_uri) if selection_uri is not None else None
    settings = stage.model_dump(mode="json")
    if selection_record is not None:
        settings["selection"] = selection_record
    record = create_dataset_version(
        cat,
        stage.name,
        parents=previous_version(cat, stage.name),  # lineage: each night's version names the last one
        selection=selection,
        max_samples=stage.max_samples if selection is None else None,  # a selection is already sized
        seed=stage.seed,
        shard_max_bytes=stage.shard_max_bytes,
        reencode_max_side=stage.reencode_max_side,
        config=settings,
        curation=curation_record(cat),
        progress=on_progress,
    )
    on_progress.close()
    ref = f"{record.name}:v{record.version}"
    logger.info(
        "dataset %s: %d samples in %d shards at %s",
        ref,
        record.num_samples,
        record.num_shards,
        record.shards_uri,
    )
    publish_markdown(
        f"dataset-{record.name}",
        f"# Dataset {ref}\n\n| field | value |\n|---|---|\n| samples | {record.num_samples} |\n"
        f"| shards | {record.num_shards} |\n| bytes | {record.total_bytes} |\n| shards | `{record.shards_uri}` |\n"
        f"| index | `{record.index_uri}` |\n| images table version | {record.images_table_version} |\n"
        f"| parents | {', '.join(record.parents) or '-'} |\n",
        f"dataset version {ref}",
    )
    return ref
