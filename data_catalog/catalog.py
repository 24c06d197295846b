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
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError


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
    ) -> pa.Table:
        """Read a table (optionally an older ``version``). A missing table reads as empty."""
        table = self._delta(name, version)
        if table is None:
            if version is not None:
                raise FileNotFoundError(f"table {name!r} does not exist in catalog {self.root}")
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        data = table.to_pyarrow_table(columns=columns)
        return data

    def append(
        self, name: str, data: pa.Table, schema: pa.Schema, metadata: dict[str, Any] | None = None
    ) -> int:
        """Append rows in one atomic commit; creates the table on first write. Returns the version."""
        data = data.select(schema.names).cast(schema)
        write_deltalake(
            self.table_uri(name),
            data,
            mode="append",
            storage_options=self.storage_options or None,
            commit_properties=_commit(metadata),
        )
        version = self.version(name)
        assert version is not None
        return version

    def upsert(
        self,
        name: str,
        data: pa.Table,
        schema: pa.Schema,
        key: str,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Insert new rows and replace rows whose ``key`` matches, in one atomic commit."""
        data = data.select(schema.names).cast(schema)
        table = self._delta(name)
        if table is None:
            return self.append(name, data, schema, metadata)
        if data.num_rows == 0:
            return table.version()
        (
            table.merge(
                source=data,
                predicate=f"target.{key} = source.{key}",
                source_alias="source",
                target_alias="target",
                commit_properties=_commit(metadata),
            )
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        version = self.version(name)
        assert version is not None
        return version

    def history(self, name: str) -> list[dict[str, Any]]:
        table = self._delta(name)
        return [] if table is None else table.history()


def _commit(metadata: dict[str, Any] | None) -> Any:
    if not metadata:
        return None
    from deltalake import CommitProperties

    return CommitProperties(custom_metadata={k: str(v) for k, v in metadata.items()})
