"""The ``curate`` sub-flow: ingest -> filter -> hash dedup, one Prefect task per partition on Dask."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from prefect.runtime import flow_run

from curation import hashdedup, ingest, parallel
from data_catalog.catalog import Catalog
from data_catalog.images import status_counts
from flows.artifacts import publish_counts, set_progress, start_progress
from flows.config import PipelineConfig
from flows.settings import save_pipeline_config


@task(name="plan-partitions")
def plan_partitions(config: PipelineConfig) -> list[list[str]]:
    """List the source and drop uris the catalog already holds (no bytes read): the partitions."""
    if config.source is None:
        return []
    return ingest.plan_partitions(Catalog(config.catalog), config.source, config.curate)


@task(name="ingest-partition", retries=2, retry_delay_seconds=5, tags=["ingest"])
def ingest_partition(
    index: int, uris: list[str], config: PipelineConfig, run_id: str, dask_address: str
) -> str:
    """Decode, hash and filter one partition on the Dask cluster; returns its staging parquet."""
    assert config.source is not None, "partitions exist only for a source"
    args = (Catalog(config.catalog), index, uris, config.source, config.curate, run_id)
    return str(parallel.run_one(dask_address, ingest.stage_partition, *args))


@task(name="commit-ingest")
def commit_ingest(catalog: str, staging: list[str], run_id: str) -> int:
    """All partitions' rows in one atomic Delta commit of the images table."""
    return ingest.commit_ingest(Catalog(catalog), staging, run_id)


@task(name="hash-dedup")
def hash_dedup(config: PipelineConfig, run_id: str) -> dict[str, Any]:
    return hashdedup.apply_hash_dedup(Catalog(config.catalog), config.curate.dedup, run_id)


def _run_id() -> str:
    run = flow_run.get_id()
    return f"curate-{run}" if run else "curate-local"


@flow(name="curate", log_prints=True)
def curate(config: PipelineConfig) -> dict[str, Any]:
    """Bring new images of ``config.source`` into the catalog; returns counts and table versions."""
    logger = get_run_logger()
    catalog = Catalog(config.catalog)
    run_id = _run_id()  # a retried flow run keeps its id, so staged partitions are reused
    logger.info("resolved config: %s", save_pipeline_config(config, run_id))
    plans = plan_partitions(config)
    logger.info("%d new files in %d partitions from %s", sum(map(len, plans)), len(plans), config.source)
    staging: list[str] = []
    if plans:
        progress = start_progress("ingest-progress", "partitions ingested")
        ing = config.curate.ingest
        with parallel.dask_session(config.dask_address, ing.n_workers, ing.threads_per_worker) as address:
            futures = [ingest_partition.submit(i, p, config, run_id, address) for i, p in enumerate(plans)]
            for done, future in enumerate(as_completed(futures), start=1):
                staging.append(future.result())
                set_progress(progress, 100.0 * done / len(plans))
    version = commit_ingest(config.catalog, sorted(staging), run_id)
    publish_counts("ingest", status_counts(catalog), f"after ingest and quality filters (images v{version})")
    dedup = hash_dedup(config, run_id) if config.curate.dedup.enabled else {}
    counts = status_counts(catalog)
    publish_counts("hash-dedup", counts, "after exact and perceptual duplicate removal")
    return {
        "catalog": catalog.root,
        "images_version": catalog.version("images"),
        "new_partitions": len(plans),
        "dedup": dedup,
        "counts": counts,
    }
