"""The dataset-version stage: accepted images -> webdataset shards + a row in ``datasets``."""

from __future__ import annotations

from prefect import get_run_logger, task

from curation.dataset_version import create_dataset_version
from data_catalog.catalog import Catalog
from flows.artifacts import publish_markdown, set_progress, start_progress
from flows.config import DatasetStageConfig
from flows.settings import curation_record


@task(name="dataset-version", retries=1, retry_delay_seconds=5)
def dataset_version(catalog: str, stage: DatasetStageConfig) -> str:
    """Write a new immutable dataset version and return its reference ``NAME:vN``."""
    logger = get_run_logger()
    progress = start_progress(f"dataset-{stage.name}-progress", "shards")

    def on_progress(done: int, total: int) -> None:
        if total:
            set_progress(progress, 100.0 * done / total)

    record = create_dataset_version(
        Catalog(catalog),
        stage.name,
        max_samples=stage.max_samples,
        seed=stage.seed,
        shard_max_bytes=stage.shard_max_bytes,
        reencode_max_side=stage.reencode_max_side,
        config=stage.model_dump(mode="json"),
        curation=curation_record(Catalog(catalog)),
        progress=on_progress,
    )
    set_progress(progress, 100.0)
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
        f"| index | `{record.index_uri}` |\n| images table version | {record.images_table_version} |\n",
        f"dataset version {ref}",
    )
    return ref
