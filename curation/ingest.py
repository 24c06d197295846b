"""Ingest: list a source, decode and filter new inputs partition by partition, commit once.

The steps, each callable on its own (the Prefect flow wraps them one task each)::

    partitions = plan_partitions(catalog, source, cfg)            # only uris not in the catalog
    staged = process_partitions(catalog, partitions, source, cfg, run_id, client_or_address)
    version = commit_ingest(catalog, staged, run_id)             # one Delta commit

Each partition's rows go to ``runs/<run_id>/staging/part-NNNNNN.parquet`` (written to a temporary
name, then renamed), so memory stays bounded by one partition per worker, a killed run loses no
finished partition, and re-running the same ``run_id`` reuses the staging files whose uris match.
Nothing reaches the images table before ``commit_ingest``: a run is all or nothing there. The
first commit into an empty catalog streams the staged files into the new table (flat memory).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import CurateConfig
from curation.decode import ImageRecord, decode_record
from curation.filters import apply_filters
from curation.parallel import Progress, run_tasks
from curation.sources import iter_bytes, list_source
from data_catalog.catalog import Catalog
from data_catalog.images import IMAGES_SCHEMA, Status, create_images, known_uris, upsert_images
from data_catalog.images import TABLE as IMAGES_TABLE


def _new_uris(uris: Iterator[str], known: set[str]) -> Iterator[str]:
    seen: set[str] = set()
    for uri in uris:
        if uri not in known and uri not in seen:
            seen.add(uri)
            yield uri


def plan_partitions(
    catalog: Catalog, source: str, cfg: CurateConfig, storage_options: dict[str, Any] | None = None
) -> list[list[str]]:
    """The uris of ``source`` not yet in the images table, in listing order, in partitions of
    ``cfg.ingest.partition_size``. Reads no file bytes; a uri listed twice appears once."""
    known = known_uris(catalog)
    size = cfg.ingest.partition_size
    partitions: list[list[str]] = []
    current: list[str] = []
    for uri in _new_uris(list_source(source, storage_options), known):
        current.append(uri)
        if len(current) == size:
            partitions.append(current)
            current = []
    if current:
        partitions.append(current)
    return partitions


def record_row(record: ImageRecord, cfg: CurateConfig, source: str, run_id: str, now: dt.datetime) -> dict:
    """One images-table row: decode failures and filter failures are ``rejected`` with a reason."""
    row = record.as_dict()
    if record.reason is None:
        failed = apply_filters(record, cfg.filter)
        if failed is not None:
            row["reason"], row["detail"] = failed
    row["reason"] = None if row["reason"] is None else str(row["reason"])
    row["status"] = Status.ACCEPTED.value if row["reason"] is None else Status.REJECTED.value
    row.update(
        source=source, dup_of=None, dup_of_uri=None, first_run_id=run_id, run_id=run_id,
        ingested_at=now, updated_at=now,
    )  # fmt: skip
    return row


def process_partition(
    uris: list[str],
    source: str,
    cfg: CurateConfig,
    run_id: str,
    storage_options: dict[str, Any] | None = None,
) -> pa.Table:
    """Read, decode and filter ``uris``: one row per uri in ``IMAGES_SCHEMA`` (accepted/rejected).

    One bad file never fails the batch: it becomes a rejected row with ``detail``.
    """
    now = dt.datetime.now(dt.UTC)
    ing = cfg.ingest
    rows = [
        record_row(decode_record(uri, data, ing.max_pixels, ing.thumbnail_size), cfg, source, run_id, now)
        for uri, data in iter_bytes(uris, storage_options, ing.read_batch)
    ]
    return pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA)


def staging_path(catalog: Catalog, run_id: str, index: int) -> str:
    return catalog.uri("runs", run_id, "staging", f"part-{index:06d}.parquet")


def write_staged(catalog: Catalog, table: pa.Table, path: str) -> None:
    """Write a staged partition to ``path`` atomically (a temporary file, then a rename): a kill
    leaves either the whole file or none, never a torn one that a later run would adopt."""
    fs = catalog.filesystem()
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}.parquet"
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f)
    fs.mv(tmp, path)


def _staged_matches(catalog: Catalog, path: str, uris: list[str]) -> bool:
    """An existing staging file is reused only if it holds exactly these uris."""
    fs = catalog.filesystem()
    if not fs.exists(path):
        return False
    try:
        with fs.open(path, "rb") as f:
            staged = pq.read_table(f, columns=["uri"], use_threads=False).column("uri").to_pylist()
    except Exception:  # a damaged staging file is simply recomputed
        return False
    return sorted(staged) == sorted(uris)


def stage_partition(
    catalog: Catalog,
    index: int,
    uris: list[str],
    source: str,
    cfg: CurateConfig,
    run_id: str,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """``process_partition`` written to its staging parquet (skipped when a matching one exists)."""
    path = staging_path(catalog, run_id, index)
    if not _staged_matches(catalog, path, uris):
        write_staged(catalog, process_partition(uris, source, cfg, run_id, storage_options), path)
    return path


def process_partitions(
    catalog: Catalog,
    partitions: list[list[str]],
    source: str,
    cfg: CurateConfig,
    run_id: str,
    client_or_address: Any = None,
    progress: Progress | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """Stage every partition on Dask (see ``curation.parallel``); the staging paths, in order."""
    args = [(catalog, i, uris, source, cfg, run_id, storage_options) for i, uris in enumerate(partitions)]
    return run_tasks(
        stage_partition,
        args,
        client_or_address=client_or_address,
        n_workers=cfg.ingest.n_workers,
        threads_per_worker=cfg.ingest.threads_per_worker,
        progress=progress,
    )


def _staged_batches(catalog: Catalog, staging_paths: list[str]) -> Iterator[pa.RecordBatch]:
    """The staged rows, batch by batch, in ``IMAGES_SCHEMA``."""
    fs = catalog.filesystem()
    for path in staging_paths:
        with fs.open(path, "rb") as f:
            # one thread: pyarrow threads reading a Python file object can abort the interpreter
            # at exit (see Catalog.read)
            for batch in pq.ParquetFile(f).iter_batches(use_threads=False):
                yield batch.select(IMAGES_SCHEMA.names).cast(IMAGES_SCHEMA)


def commit_ingest(catalog: Catalog, staging_paths: list[str], run_id: str) -> int:
    """Upsert all staged rows into the images table in ONE Delta commit; returns the table version.

    Rows are keyed by uri; with no staging files the table is created empty if missing. The first
    ingest into a catalog (often the bulk of it) streams the staged rows into the new table, so its
    memory does not grow with the number of images; later ones MERGE them (held in memory).
    """
    if staging_paths and not catalog.exists(IMAGES_TABLE):
        try:
            return create_images(catalog, lambda: _staged_batches(catalog, staging_paths), run_id)
        except FileExistsError:  # another run created the table meanwhile: merge into it below
            pass
    batches = list(_staged_batches(catalog, staging_paths))
    rows = pa.Table.from_batches(batches, schema=IMAGES_SCHEMA)
    return upsert_images(catalog, rows, run_id)


@dataclass(frozen=True)
class IngestResult:
    run_id: str
    version: int  # images table version after the commit
    n_new: int  # inputs processed in this run (not yet in the catalog before)
    staging_paths: list[str]


def ingest(
    catalog: Catalog,
    source: str,
    cfg: CurateConfig,
    run_id: str,
    client_or_address: Any = None,
    progress: Progress | None = None,
    storage_options: dict[str, Any] | None = None,
) -> IngestResult:
    """plan -> process -> commit in one call (the flow may call the three steps itself)."""
    partitions = plan_partitions(catalog, source, cfg, storage_options)
    staged = process_partitions(
        catalog, partitions, source, cfg, run_id, client_or_address, progress, storage_options
    )
    version = commit_ingest(catalog, staged, run_id)
    return IngestResult(run_id, version, sum(map(len, partitions)), staged)
