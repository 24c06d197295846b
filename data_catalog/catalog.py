"""The data catalog: versioned Delta Lake tables under one root (local folder or fsspec URI).

Every write is one Delta commit: atomic, a new table version, earlier versions stay readable
(time travel), and a process killed mid-write leaves the previous version as it was. Any engine
that reads Delta (Spark, DuckDB, Polars, Dask via ``deltalake``) can read these tables.

Layout::

    CATALOG/
      tables/<name>/            Delta tables (images, datasets, runs, ...)
      datasets/<name>/v<N>/     webdataset shards + shard index of one dataset version
      runs/<run_id>/            per-run reports and staging files

Only the modules of this package read or write tables; each table has one schema constant and
one writer module (``images.py``, ``datasets.py``, ``runs.py``).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pa_fs
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

T = TypeVar("T")
Key = str | tuple[str, ...]  # one key column, or several (a composite key: embeddings)


def _normalise_root(root: str | os.PathLike[str]) -> str:
    root = os.fspath(root)
    if "://" in root and not root.startswith("file://"):
        return root.rstrip("/")
    if root.startswith("file://"):
        root = root[len("file://") :]
    return os.path.abspath(os.path.expanduser(root))


@dataclass(frozen=True)
class Catalog:
    """A catalog root. ``Catalog("/data/catalog")`` or ``Catalog("s3://bucket/catalog", {...})``.

    ``storage_options`` are passed to both deltalake and fsspec (credentials, endpoints).
    """

    root: str
    storage_options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _normalise_root(self.root))

    # ---------------------------------------------------------------- locations
    @property
    def is_local(self) -> bool:
        return "://" not in self.root

    def uri(self, *parts: str) -> str:
        """A location under the catalog root (not created)."""
        return "/".join([self.root, *[p.strip("/") for p in parts]])

    def table_uri(self, name: str) -> str:
        return self.uri("tables", name)

    def filesystem(self) -> fsspec.AbstractFileSystem:
        if self.is_local:
            return fsspec.filesystem("file")
        protocol = self.root.split("://", 1)[0]
        return fsspec.filesystem(protocol, **self.storage_options)

    # ---------------------------------------------------------------- tables
    def _delta(self, name: str, version: int | None = None) -> DeltaTable | None:
        try:
            return DeltaTable(
                self.table_uri(name), version=version, storage_options=self.storage_options or None
            )
        except TableNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self._delta(name) is not None

    def version(self, name: str) -> int | None:
        """The newest version of a table, or None when the table does not exist yet."""
        table = self._delta(name)
        return None if table is None else table.version()

    def read(
        self,
        name: str,
        schema: pa.Schema,
        version: int | None = None,
        columns: list[str] | None = None,
        where: pc.Expression | None = None,
    ) -> pa.Table:
        """Read a table (optionally an older ``version``). A missing table reads as empty.

        ``where`` (a pyarrow expression on read columns, e.g. ``pc.field("uri").isin(uris)``) is
        applied batch by batch while scanning: only matching rows are held in memory.
        """
        table = self._delta(name, version)
        if table is None:
            if version is not None:
                raise FileNotFoundError(f"table {name!r} does not exist in catalog {self.root}")
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        # deltalake's object-store filesystem is a Python-backed pyarrow filesystem: with pyarrow's
        # reader threads calling back into Python, the interpreter aborts at exit ("terminate called
        # without an active exception", exit 134; measured 6 of 10 processes that read a 5,000-row
        # table). On one thread it exits cleanly (0 of 10); local tables use pyarrow's native files.
        if self.is_local:
            local = pa_fs.SubTreeFileSystem(self.table_uri(name), pa_fs.LocalFileSystem())
            dataset, threads = table.to_pyarrow_dataset(filesystem=local), True
        else:
            dataset, threads = table.to_pyarrow_dataset(), False
        if where is None:
            return dataset.to_table(columns=columns, use_threads=threads)
        # Not the scanner's own filter: it prunes row groups by statistics, and deltalake's files
        # store strings as string_view, which pyarrow cannot compare with a string literal.
        kept = [
            pa.Table.from_batches([batch]).filter(where)
            for batch in dataset.to_batches(columns=columns, use_threads=threads)
        ]
        projected = (
            dataset.schema if columns is None else pa.schema([dataset.schema.field(c) for c in columns])
        )
        return pa.concat_tables(kept) if kept else projected.empty_table()

    def create(
        self,
        name: str,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Create table ``name`` as version 0 from a stream of batches (a bulk load, such as the
        first ingest of a large folder), holding about one batch in memory. Returns 0.

        Raises ``FileExistsError`` when the table exists or another writer creates it first. An
        exception raised by ``batches`` aborts the write before anything is committed (the data
        files already written are never referenced) and is re-raised as is.
        """
        from deltalake.exceptions import CommitFailedError, DeltaError

        failure: list[Exception] = []

        def guarded() -> Iterator[pa.RecordBatch]:
            try:
                for batch in batches:
                    yield batch.select(schema.names).cast(schema)
            except Exception as exc:  # not GeneratorExit: the writer may close the stream early
                failure.append(exc)
                raise

        try:
            # Create only. deltalake would otherwise rebase a writer that lost the race to create
            # the table onto the winner's version 0 as a blind append (measured: two creators, two
            # rows with one key); with no commit retries the loser raises and can merge instead.
            write_deltalake(
                self.table_uri(name),
                pa.RecordBatchReader.from_batches(schema, guarded()),
                mode="error",
                storage_options=self.storage_options or None,
                commit_properties=_commit(metadata, max_commit_retries=0),
            )
        except (DeltaError, FileExistsError) as exc:
            if failure:
                raise failure[0] from None
            # a racing creator committed version 0 first ("Failed to commit transaction: 0")
            if isinstance(exc, CommitFailedError) or "already exists" in str(exc):
                raise FileExistsError(f"table {name!r} already exists in catalog {self.root}") from exc
            raise
        return 0

    def upsert(
        self,
        name: str,
        data: pa.Table,
        schema: pa.Schema,
        key: Key,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Insert new rows and replace rows whose ``key`` matches, in one atomic commit.

        Safe beside other writers of the same table (two training runs registering themselves, a
        pipeline run beside a manual ``dinoflow dataset create``): a merge that loses the commit race
        to a concurrent transaction is re-read and re-run (:func:`retry_on_conflict`). A merge is
        idempotent on ``key``, so re-running it cannot duplicate rows.
        """
        return self._merge(name, data, schema, key, metadata, update=True)[0]

    def insert_new(
        self,
        name: str,
        data: pa.Table,
        schema: pa.Schema,
        key: Key,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[int, int]:
        """Insert the rows whose ``key`` is not in the table yet, atomically -> (version, rows inserted).

        Rows whose key exists are left untouched (immutable records: dataset versions, embeddings;
        ``key`` may be a tuple of columns, all of which must match: ``("image_id", "model_id")``). Concurrent
        writers are serialised by the commit protocol: of two processes inserting the same key, one
        inserts and the other sees it and inserts nothing.
        """
        return self._merge(name, data, schema, key, metadata, update=False)

    def update(
        self,
        name: str,
        data: pa.Table,
        schema: pa.Schema,
        key: Key,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Set the columns of ``data`` (``key`` plus any of ``schema``'s columns) on the rows whose
        ``key`` matches, in one atomic commit; every other column, and keys not in the table, are
        left alone. Returns the version committed. Retried on commit conflicts like ``upsert``.

        Cheaper than ``upsert`` when a step decides a few columns: the caller needs no full rows.
        """
        return self._merge(name, data, schema, key, metadata, update=True, insert=False)[0]

    def _merge(
        self,
        name: str,
        data: pa.Table,
        schema: pa.Schema,
        key: Key,
        metadata: dict[str, Any] | None,
        update: bool,
        insert: bool = True,
    ) -> tuple[int, int]:
        """Merge on ``key`` (matched rows replaced when ``update``; only ``data``'s columns when not
        ``insert``), retried on commit conflicts -> (the version this merge committed, not a later
        writer's; rows inserted)."""
        keys = (key,) if isinstance(key, str) else tuple(key)
        if insert:
            data = data.select(schema.names).cast(schema)
        else:
            unknown = [c for c in data.column_names if c not in schema.names]
            if unknown or any(k not in data.column_names for k in keys):
                raise ValueError(
                    f"update of {name!r}: needs {key!r} and columns of its schema, got {unknown}"
                )
            data = data.cast(pa.schema([schema.field(c) for c in data.column_names]))

        def attempt() -> tuple[int, int]:
            table = self._delta(name)
            if table is None:
                if not insert:
                    raise FileNotFoundError(f"table {name!r} does not exist in catalog {self.root}")
                return self.create(name, data.to_batches(), schema, metadata), data.num_rows
            if data.num_rows == 0:
                return table.version(), 0
            merger = table.merge(
                source=data,
                predicate=" AND ".join(f"target.{k} = source.{k}" for k in keys),
                source_alias="source",
                target_alias="target",
                # The source is in memory already; unstreamed, deltalake derives a pruning predicate
                # from its key range and skips target files outside it (a nightly folder of new
                # uris touches only the files that can hold them: 4M rows, peak RSS 2515 -> 235 MB,
                # benchmarks/bench_catalog.py). Streamed, it scans the whole table.
                streamed_exec=False,
                commit_properties=_commit(metadata),
            )
            if update and insert:
                merger = merger.when_matched_update_all()
            elif update:
                columns = [c for c in data.column_names if c not in keys]
                merger = merger.when_matched_update(updates={c: f"source.{c}" for c in columns})
            if insert:
                merger = merger.when_not_matched_insert_all()
            metrics = merger.execute()
            return table.version(), int(metrics.get("num_target_rows_inserted", 0))

        verb = "update" if not insert else "upsert into" if update else "insert into"
        return retry_on_conflict(attempt, f"{verb} {self.table_uri(name)}")

    def history(self, name: str) -> list[dict[str, Any]]:
        table = self._delta(name)
        return [] if table is None else table.history()


COMMIT_RETRIES = 10


def retry_on_conflict(attempt: Callable[[], T], what: str, retries: int = COMMIT_RETRIES) -> T:
    """Run ``attempt`` again (jittered exponential backoff, 50 ms doubling up to 2 s) while it loses a
    commit race: deltalake's ``CommitFailedError`` (a concurrent transaction touched what this one
    read) or the table being created by another writer at the same moment. After ``retries``
    attempts the last error is raised with what was being written.
    """
    from deltalake.exceptions import CommitFailedError, DeltaError

    delay = 0.05
    for n in range(1, retries + 1):
        try:
            return attempt()
        except (CommitFailedError, DeltaError, FileExistsError) as exc:
            racing = isinstance(exc, CommitFailedError) or "already exists" in str(exc)
            if not racing:
                raise
            if n == retries:
                raise RuntimeError(
                    f"{what}: still conflicting with concurrent writers after {retries} attempts: {exc}"
                ) from exc
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2.0, 2.0)
    raise AssertionError("unreachable")


def _commit(metadata: dict[str, Any] | None, max_commit_retries: int | None = None) -> Any:
    if not metadata and max_commit_retries is None:
        return None
    from deltalake import CommitProperties

    return CommitProperties(
        custom_metadata={k: str(v) for k, v in (metadata or {}).items()} or None,
        max_commit_retries=max_commit_retries,
    )
